// Package serve is fewstep's HTTP server over the inference library (docs/serve.md): generate
// requests (prompt embeddings, or captions through the synthetic space's text encoder) wait in a
// bounded queue; one worker merges the waiting requests of one kind (whole videos or streams, at
// one frame count and step count) into a single batched generation and hands each request its own
// videos; streams send each chunk as Server-Sent Events as soon as it is sampled. Limits answer
// with 4xx, /healthz and /metrics report the state, and Shutdown finishes the requests in flight.
package serve

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fewstep/fewstep/pipeline"
)

// Options are the server's limits and batching.
type Options struct {
	MaxFrames  int           // latent frames a request may ask for (0: 4 × the recipe's)
	MaxPrompts int           // prompts in one request (16)
	MaxBatch   int           // prompts merged into one generation (16)
	MaxQueue   int           // requests waiting; more get 429 (256)
	MaxBody    int64         // request body bytes; more get 413 (8 MiB)
	BatchWait  time.Duration // how long the worker waits for more requests to join a batch (2 ms)
	Scale      int           // PNG frames: pixels upscaled by this (1)
}

func (o *Options) defaults(r *pipeline.Recipe) {
	if o.MaxFrames <= 0 {
		o.MaxFrames = 4 * r.Frames
	}
	if o.MaxPrompts <= 0 {
		o.MaxPrompts = 16
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 16
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = 256
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 8 << 20
	}
	if o.BatchWait <= 0 {
		o.BatchWait = 2 * time.Millisecond
	}
	if o.Scale <= 0 {
		o.Scale = 1
	}
}

// Request is the JSON body of POST /v1/generate. Give captions (synthetic space) or embeddings.
type Request struct {
	Captions   []string      `json:"captions,omitempty"`
	Embeddings [][][]float32 `json:"embeddings,omitempty"` // per prompt [n ≤ text_len][text_dim]
	Seeds      []int64       `json:"seeds,omitempty"`      // per prompt (default 0, 1, 2, ...)
	Frames     int           `json:"frames,omitempty"`     // latent frames (0: the recipe's)
	Steps      int           `json:"steps,omitempty"`      // denoising steps (0: the recipe's)
	Stream     bool          `json:"stream,omitempty"`     // Server-Sent Events, chunk by chunk (causal students)
	Output     string        `json:"output,omitempty"`     // png (default where the space decodes) | latents
}

// Video is one generated video in a response.
type Video struct {
	Index   int      `json:"index"`
	Seed    int64    `json:"seed"`
	Shape   []int    `json:"shape"`             // the latents' [C, F, H, W]
	Frames  []string `json:"frames,omitempty"`  // PNG data URLs, one per latent frame (synthetic space)
	Latents string   `json:"latents,omitempty"` // base64 of little-endian float32 [C, F, H, W], raw
}

// Response is the JSON answer of a whole-video request.
type Response struct {
	Videos     []Video `json:"videos"`
	NFE        int     `json:"nfe"`
	Batch      int     `json:"batch"` // videos in the generation this request shared
	QueueMs    float64 `json:"queue_ms"`
	GenerateMs float64 `json:"generate_ms"`
}

// ChunkEvent is the data of an SSE "chunk" event: latent frames Frame0.. of every video.
type ChunkEvent struct {
	Index  int     `json:"index"`
	Frame0 int     `json:"frame0"`
	Videos []Video `json:"videos"` // Frames / Latents of this chunk only
	Ms     float64 `json:"ms"`     // since the request arrived
}

// job is one admitted request waiting for, or in, a generation.
type job struct {
	ctx     context.Context
	req     pipeline.Request
	stream  bool
	output  string
	arrived time.Time
	started time.Time
	chunks  chan ChunkEvent // stream: buffered for every chunk
	done    chan result
}

type result struct {
	out   *pipeline.Output
	nfe   int
	batch int
	err   error
}

// Server serves one pipeline.
type Server struct {
	P    *pipeline.Pipeline
	Opts Options

	queue    chan *job
	draining atomic.Bool
	mu       sync.Mutex // guards the queue's closing
	closed   bool
	workerWG sync.WaitGroup
	m        metrics
}

// New makes a server and starts its worker.
func New(p *pipeline.Pipeline, o Options) *Server {
	o.defaults(p.Recipe)
	s := &Server{P: p, Opts: o, queue: make(chan *job, o.MaxQueue)}
	s.workerWG.Add(1)
	go s.worker()
	return s
}

// Close stops admitting requests, lets the worker finish every queued one, and waits for it.
// Call it after http.Server.Shutdown has returned (the handlers then have their answers).
func (s *Server) Close() {
	s.draining.Store(true)
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.queue)
	}
	s.mu.Unlock()
	s.workerWG.Wait()
}

// Drain makes /healthz report 503 and new requests get 503, while queued ones finish.
func (s *Server) Drain() { s.draining.Store(true) }

// Handler routes /, /v1/generate, /v1/stream, /healthz and /metrics.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/generate", s.handleGenerate)
	mux.HandleFunc("/v1/stream", s.handleStreamGet)
	mux.HandleFunc("/healthz", s.handleHealth)
	mux.HandleFunc("/metrics", s.handleMetrics)
	mux.HandleFunc("/", s.handlePage)
	return mux
}

// httpError answers with a JSON error and counts it.
func (s *Server) httpError(w http.ResponseWriter, code int, format string, a ...any) {
	s.m.code(code)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, a...)})
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		s.httpError(w, http.StatusMethodNotAllowed, "POST a JSON request to /v1/generate")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.Opts.MaxBody))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			s.httpError(w, http.StatusRequestEntityTooLarge, "request body over %d bytes", s.Opts.MaxBody)
			return
		}
		s.httpError(w, http.StatusBadRequest, "reading the body: %v", err)
		return
	}
	var req Request
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.httpError(w, http.StatusBadRequest, "malformed JSON: %v", err)
		return
	}
	s.serve(w, r, &req)
}

// handleStreamGet is GET /v1/stream?caption=...&seed=...&frames=...&steps=...: one caption
// streamed as Server-Sent Events (what the page's EventSource asks for).
func (s *Server) handleStreamGet(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		s.httpError(w, http.StatusMethodNotAllowed, "GET /v1/stream?caption=...")
		return
	}
	q := r.URL.Query()
	req := Request{Captions: []string{q.Get("caption")}, Stream: true}
	for _, f := range []struct {
		key string
		dst *int
	}{{"frames", &req.Frames}, {"steps", &req.Steps}} {
		if v := q.Get(f.key); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				s.httpError(w, http.StatusBadRequest, "%s=%q is not an integer", f.key, v)
				return
			}
			*f.dst = n
		}
	}
	if v := q.Get("seed"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			s.httpError(w, http.StatusBadRequest, "seed=%q is not an integer", v)
			return
		}
		req.Seeds = []int64{n}
	}
	s.serve(w, r, &req)
}

// admit turns a request into a job, or answers the client with a 4xx.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, req *Request) *job {
	rec := s.P.Recipe
	n := len(req.Captions) + len(req.Embeddings)
	switch {
	case len(req.Captions) > 0 && len(req.Embeddings) > 0:
		s.httpError(w, http.StatusBadRequest, "give captions or embeddings, not both")
		return nil
	case n == 0:
		s.httpError(w, http.StatusBadRequest, "no prompts: give captions or embeddings")
		return nil
	case n > s.Opts.MaxPrompts:
		s.httpError(w, http.StatusBadRequest, "%d prompts, at most %d per request", n, s.Opts.MaxPrompts)
		return nil
	case req.Frames < 0 || req.Frames > s.Opts.MaxFrames:
		s.httpError(w, http.StatusBadRequest, "frames %d: want 1..%d latent frames (0: the recipe's %d)", req.Frames, s.Opts.MaxFrames, rec.Frames)
		return nil
	case req.Steps < 0 || req.Steps > 64:
		s.httpError(w, http.StatusBadRequest, "steps %d: want 1..64 (0: the recipe's)", req.Steps)
		return nil
	case len(req.Seeds) != 0 && len(req.Seeds) != n:
		s.httpError(w, http.StatusBadRequest, "%d seeds for %d prompts", len(req.Seeds), n)
		return nil
	case req.Stream && !rec.Causal:
		s.httpError(w, http.StatusBadRequest, "stream: this student (%s) is bidirectional; only causal students stream", rec.Objective)
		return nil
	}
	out := req.Output
	switch {
	case out == "" && rec.Decodes():
		out = "png"
	case out == "":
		out = "latents"
	case out == "png" && !rec.Decodes():
		s.httpError(w, http.StatusBadRequest, "output png: this student's latent space (%s) does not decode here; ask for latents", rec.LatentSpace)
		return nil
	case out != "png" && out != "latents":
		s.httpError(w, http.StatusBadRequest, "output %q: want png or latents", out)
		return nil
	}
	j := &job{ctx: r.Context(), stream: req.Stream, output: out, arrived: time.Now(), done: make(chan result, 1),
		req: pipeline.Request{Frames: req.Frames, Steps: req.Steps, Seeds: req.Seeds}}
	for i, c := range req.Captions {
		e, err := s.P.EncodeCaption(c)
		if err != nil {
			s.httpError(w, http.StatusBadRequest, "captions[%d]: %v", i, err)
			return nil
		}
		j.req.Prompts = append(j.req.Prompts, e)
	}
	for i, e := range req.Embeddings {
		if len(e) == 0 || len(e) > rec.TextLen {
			s.httpError(w, http.StatusBadRequest, "embeddings[%d]: %d tokens, want 1..%d of text_dim %d", i, len(e), rec.TextLen, rec.TextDim)
			return nil
		}
		flat := make([]float32, 0, len(e)*rec.TextDim)
		for t, row := range e {
			if len(row) != rec.TextDim {
				s.httpError(w, http.StatusBadRequest, "embeddings[%d][%d]: %d values, want text_dim %d", i, t, len(row), rec.TextDim)
				return nil
			}
			for _, v := range row {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					s.httpError(w, http.StatusBadRequest, "embeddings[%d][%d]: not a finite number", i, t)
					return nil
				}
			}
			flat = append(flat, row...)
		}
		j.req.Prompts = append(j.req.Prompts, flat)
	}
	if len(j.req.Seeds) == 0 {
		for i := range j.req.Prompts {
			j.req.Seeds = append(j.req.Seeds, int64(i))
		}
	}
	if F := j.req.Frames; j.stream && F > 0 && F%rec.ChunkFrames != 0 {
		s.httpError(w, http.StatusBadRequest, "frames %d: a stream is whole chunks of %d frames", F, rec.ChunkFrames)
		return nil
	}
	if j.stream {
		F := j.req.Frames
		if F == 0 {
			F = rec.Frames
		}
		j.chunks = make(chan ChunkEvent, F/rec.ChunkFrames+1)
	}
	return j
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, req *Request) {
	if s.draining.Load() {
		s.httpError(w, http.StatusServiceUnavailable, "the server is shutting down")
		return
	}
	j := s.admit(w, r, req)
	if j == nil {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.httpError(w, http.StatusServiceUnavailable, "the server is shutting down")
		return
	}
	select {
	case s.queue <- j:
		s.mu.Unlock()
	default:
		s.mu.Unlock()
		s.httpError(w, http.StatusTooManyRequests, "the queue is full (%d requests waiting): retry later", s.Opts.MaxQueue)
		return
	}
	s.m.queued.Add(1)
	if j.stream {
		s.streamOut(w, j)
		return
	}
	res := <-j.done
	if res.err != nil {
		s.answerErr(w, res.err)
		return
	}
	resp := Response{NFE: res.nfe, Batch: res.batch, QueueMs: ms(j.started.Sub(j.arrived)), GenerateMs: ms(time.Since(j.started))}
	per := res.out.C * res.out.F * res.out.H * res.out.W
	for i := range j.req.Prompts {
		v := Video{Index: i, Seed: j.req.Seeds[i], Shape: []int{res.out.C, res.out.F, res.out.H, res.out.W}}
		s.fill(&v, j.output, res.out.Latents[i*per:(i+1)*per], pixelsOf(res.out.Pixels, i), res.out.F)
		resp.Videos = append(resp.Videos, v)
	}
	s.m.code(http.StatusOK)
	s.m.latency(time.Since(j.arrived))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

func pixelsOf(p [][]float32, i int) []float32 {
	if p == nil {
		return nil
	}
	return p[i]
}

// answerErr maps a generation error to a status.
func (s *Server) answerErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, pipeline.ErrBadRequest):
		s.httpError(w, http.StatusBadRequest, "%v", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		s.m.code(499) // the client went away; nobody reads the answer
	default:
		s.httpError(w, http.StatusInternalServerError, "generation failed: %v", err)
	}
}

// streamOut writes a stream job's chunks as Server-Sent Events until its result arrives.
func (s *Server) streamOut(w http.ResponseWriter, j *job) {
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if fl != nil {
		fl.Flush()
	}
	send := func(event string, v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		if fl != nil {
			fl.Flush()
		}
	}
	for {
		select {
		case c := <-j.chunks:
			send("chunk", c)
		case res := <-j.done:
			for len(j.chunks) > 0 { // chunks sent before the result
				send("chunk", <-j.chunks)
			}
			if res.err != nil {
				if !errors.Is(res.err, context.Canceled) {
					send("error", map[string]string{"error": res.err.Error()})
				}
				s.m.code(499)
				return
			}
			send("done", map[string]any{"nfe": res.nfe, "batch": res.batch, "ms": ms(time.Since(j.arrived))})
			s.m.code(http.StatusOK)
			s.m.latency(time.Since(j.arrived))
			return
		}
	}
}

// fill puts one video's (or chunk's) latents or PNG frames into v.
func (s *Server) fill(v *Video, output string, lat, pix []float32, F int) {
	if output == "latents" || pix == nil {
		b := make([]byte, 4*len(lat))
		for i, x := range lat {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		v.Latents = base64.StdEncoding.EncodeToString(b)
		return
	}
	H, W := 4*s.P.Recipe.Height, 4*s.P.Recipe.Width
	for f := 0; f < F; f++ {
		v.Frames = append(v.Frames, pngFrame(pix, f, F, H, W, s.Opts.Scale))
	}
}

// pngFrame encodes frame f of pix [3, F, H, W] in [0, 1] as a PNG data URL.
func pngFrame(pix []float32, f, F, H, W, scale int) string {
	img := image.NewNRGBA(image.Rect(0, 0, W*scale, H*scale))
	plane := H * W
	for y := 0; y < H*scale; y++ {
		for x := 0; x < W*scale; x++ {
			var c [3]uint8
			for ch := 0; ch < 3; ch++ {
				v := pix[(ch*F+f)*plane+(y/scale)*W+x/scale]
				c[ch] = uint8(min(max(v, 0), 1)*255 + 0.5)
			}
			img.SetNRGBA(x, y, color.NRGBA{c[0], c[1], c[2], 255})
		}
	}
	var b bytes.Buffer
	png.Encode(&b, img)
	return "data:image/png;base64," + base64.StdEncoding.EncodeToString(b.Bytes())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

// kind is what jobs must share to run in one generation.
type kind struct {
	stream        bool
	frames, steps int
}

func (j *job) kind() kind { return kind{j.stream, j.req.Frames, j.req.Steps} }

// worker takes the oldest job, lets more of its kind join for BatchWait (up to MaxBatch prompts),
// and runs them as one generation. Jobs of another kind wait for the next round, in order.
func (s *Server) worker() {
	defer s.workerWG.Done()
	var held []*job // taken from the queue, not yet run
	// gone answers a job whose client has left while it waited (it takes no batch slot)
	gone := func(j *job) bool {
		if j.ctx.Err() == nil {
			return false
		}
		s.m.queued.Add(-1)
		j.done <- result{err: j.ctx.Err()}
		return true
	}
	for {
		if len(held) == 0 {
			j, ok := <-s.queue
			if !ok {
				return
			}
			if gone(j) {
				continue
			}
			held = append(held, j)
		}
		k := held[0].kind()
		batch, rest := []*job{}, []*job{}
		prompts := 0
		take := func(j *job) {
			if j.kind() == k && prompts+len(j.req.Prompts) <= s.Opts.MaxBatch {
				batch, prompts = append(batch, j), prompts+len(j.req.Prompts)
			} else {
				rest = append(rest, j)
			}
		}
		for _, j := range held {
			if !gone(j) {
				take(j)
			}
		}
		deadline := time.After(s.Opts.BatchWait)
	fill:
		for prompts < s.Opts.MaxBatch && len(batch) > 0 {
			select {
			case j, ok := <-s.queue:
				if !ok {
					break fill
				}
				if !gone(j) {
					take(j)
				}
			case <-deadline:
				break fill
			}
		}
		held = rest
		if len(batch) > 0 {
			s.run(batch)
		}
	}
}

// run generates one batch and answers each job.
func (s *Server) run(batch []*job) {
	live := batch[:0]
	for _, j := range batch {
		s.m.queued.Add(-1)
		if j.ctx.Err() != nil { // gave up while queued
			j.done <- result{err: j.ctx.Err()}
			continue
		}
		live = append(live, j)
	}
	if len(live) == 0 {
		return
	}
	req := pipeline.Request{Frames: live[0].req.Frames, Steps: live[0].req.Steps}
	offs := make([]int, len(live)+1)
	for i, j := range live {
		j.started = time.Now()
		req.Prompts = append(req.Prompts, j.req.Prompts...)
		req.Seeds = append(req.Seeds, j.req.Seeds...)
		offs[i+1] = offs[i] + len(j.req.Prompts)
	}
	// the generation stops when every client of the batch has gone
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var gone atomic.Int32
	for _, j := range live {
		stop := context.AfterFunc(j.ctx, func() {
			if int(gone.Add(1)) == len(live) {
				cancel()
			}
		})
		defer stop()
	}
	s.m.batch(len(req.Prompts))
	t0 := time.Now()
	B := len(req.Prompts)
	if live[0].stream {
		nfe, _, err := s.P.Stream(ctx, req, func(c pipeline.Chunk) error {
			per := c.C * c.Frames * c.H * c.W
			for i, j := range live {
				if j.ctx.Err() != nil {
					continue // this client left; the others go on
				}
				ev := ChunkEvent{Index: c.Index, Frame0: c.Frame0, Ms: ms(time.Since(j.arrived))}
				for b := offs[i]; b < offs[i+1]; b++ {
					v := Video{Index: b - offs[i], Seed: req.Seeds[b], Shape: []int{c.C, c.Frames, c.H, c.W}}
					s.fill(&v, j.output, c.Latents[b*per:(b+1)*per], pixelsOf(c.Pixels, b), c.Frames)
					ev.Videos = append(ev.Videos, v)
				}
				j.chunks <- ev // buffered for every chunk of the stream
			}
			return nil
		})
		s.m.generated(B, time.Since(t0))
		for _, j := range live {
			err := err
			if err == nil && j.ctx.Err() != nil {
				err = j.ctx.Err()
			}
			j.done <- result{nfe: nfe, batch: B, err: err}
		}
		return
	}
	out, err := s.P.Generate(ctx, req)
	s.m.generated(B, time.Since(t0))
	for i, j := range live {
		if err != nil {
			j.done <- result{err: err}
			continue
		}
		per := out.C * out.F * out.H * out.W
		sub := &pipeline.Output{C: out.C, F: out.F, H: out.H, W: out.W, NFE: out.NFE, Millis: out.Millis,
			Latents: out.Latents[offs[i]*per : offs[i+1]*per]}
		if out.Pixels != nil {
			sub.Pixels = out.Pixels[offs[i]:offs[i+1]]
		}
		j.done <- result{out: sub, nfe: out.NFE, batch: B}
	}
}
