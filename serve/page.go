package serve

import (
	"fmt"
	"html/template"
	"net/http"
)

// The page at /: a caption box and a player that shows each streamed frame as it arrives (an
// EventSource on /v1/stream), then loops the video. For a bidirectional student it asks for the
// whole video (POST /v1/generate) and plays it. ?caption=...&autostart=1 starts at once.
var page = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>fewstep serve</title>
<style>
body { font: 15px system-ui, sans-serif; margin: 24px; background: #111; color: #ddd; }
input, button { font: inherit; padding: 4px 8px; }
#caption { width: 28em; }
#player { width: 384px; height: 384px; image-rendering: pixelated; background: #000; display: block; margin: 16px 0; border: 1px solid #444; }
#strip img { width: 48px; height: 48px; image-rendering: pixelated; margin: 1px; border: 1px solid #333; }
#log { font: 12px ui-monospace, monospace; white-space: pre; color: #9c9; }
</style></head>
<body>
<h1>fewstep serve</h1>
<div>{{.Objective}} student · sampler {{.Sampler}} · {{.Steps}} steps · latents [{{.C}}, {{.F}}, {{.H}}, {{.W}}]{{if .Causal}} · streams {{.Chunk}}-frame chunks{{end}}</div>
<p><input id="caption" value="a red disk moving right"> frames <input id="frames" size="3" value="{{.F}}"> seed <input id="seed" size="4" value="0">
<button id="go">generate</button></p>
<img id="player" alt="">
<div id="strip"></div>
<div id="status"></div>
<div id="log"></div>
<script>
const causal = {{.Causal}};
const frames = [];
let timer = null, shown = 0;
const $ = id => document.getElementById(id);
function log(s) { $("log").textContent += s + "\n"; }
function show(src) {
  frames.push(src);
  const im = document.createElement("img"); im.src = src; $("strip").appendChild(im);
  $("player").src = src;
  $("status").textContent = frames.length + " frames received";
}
function loop() {
  clearInterval(timer);
  timer = setInterval(() => { if (frames.length) { shown = (shown + 1) % frames.length; $("player").src = frames[shown]; } }, 125);
}
function start() {
  frames.length = 0; $("strip").innerHTML = ""; $("log").textContent = ""; clearInterval(timer);
  const t0 = performance.now();
  const q = new URLSearchParams({caption: $("caption").value, frames: $("frames").value, seed: $("seed").value});
  if (causal) {
    const es = new EventSource("/v1/stream?" + q);
    es.addEventListener("chunk", e => {
      const c = JSON.parse(e.data);
      log("chunk " + c.index + " (frames " + c.frame0 + "…): sampled " + Math.round(c.ms) + " ms after the request, shown at " + Math.round(performance.now() - t0) + " ms");
      c.videos[0].frames.forEach(show);
    });
    es.addEventListener("done", e => { log("done: " + e.data); es.close(); document.body.dataset.done = "1"; loop(); });
    es.addEventListener("error", e => { if (e.data) log("error: " + e.data); es.close(); });
    return;
  }
  fetch("/v1/generate", {method: "POST", body: JSON.stringify({captions: [$("caption").value], frames: +$("frames").value, seeds: [+$("seed").value]})})
    .then(r => r.json()).then(r => {
      if (r.error) { log("error: " + r.error); return; }
      log("video after " + Math.round(performance.now() - t0) + " ms (batch " + r.batch + ")");
      r.videos[0].frames.forEach(show); document.body.dataset.done = "1"; loop();
    });
}
$("go").onclick = start;
const p = new URLSearchParams(location.search);
if (p.get("caption")) $("caption").value = p.get("caption");
if (p.get("frames")) $("frames").value = p.get("frames");
if (p.get("autostart")) start();
</script>
</body></html>
`))

func (s *Server) handlePage(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	rec := s.P.Recipe
	steps := len(rec.Timesteps)
	if steps == 0 {
		steps = rec.Steps
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := page.Execute(w, map[string]any{"Objective": rec.Objective, "Sampler": rec.Sampler, "Steps": steps,
		"C": rec.LatentChannels, "F": rec.Frames, "H": rec.Height, "W": rec.Width, "Causal": rec.Causal, "Chunk": rec.ChunkFrames}); err != nil {
		fmt.Fprintf(w, "<!-- %v -->", err)
	}
}
