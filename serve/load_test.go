package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/pipeline"
)

// TestLoad is the server under load on loopback (docs/serve.md has its figures): the demo's
// student architecture and recipe (configs/demo.yaml's dmd job on the shipped teacher's weights,
// which is the student at step 0: the same cost per request), on the CPU. 64 clients send 500
// requests (one caption each); beside them, bad requests (malformed JSON, too many frames, a
// wrong embedding shape) and clients that hang up mid-request. Every good request must be
// answered 200, every bad one 4xx; it reports p50/p95 latency and the throughput against one
// request at a time. Minutes of CPU: run with FEWSTEP_LOADTEST=1 (go test's default run skips it).
func TestLoad(t *testing.T) {
	if os.Getenv("FEWSTEP_LOADTEST") == "" {
		t.Skip("FEWSTEP_LOADTEST=1 runs the load test")
	}
	dir := t.TempDir()
	job, err := config.Load(filepath.Join("..", "configs", "demo.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "diffusion_pytorch_model.safetensors"} {
		b, err := os.ReadFile(filepath.Join("..", "configs", "teacher", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	if _, err := pipeline.WriteRecipe(dir, job); err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.Open(dir, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s := New(p, Options{})
	srv := httptest.NewServer(s.Handler())
	defer func() { srv.Close(); s.Close() }()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}

	var caps []string
	for _, c := range data.Colours[:6] {
		for _, sh := range data.Shapes {
			caps = append(caps, data.Caption(c.Name, sh, "right"))
		}
	}
	one := func(i int) (int, time.Duration) {
		body := fmt.Sprintf(`{"captions": [%q], "seeds": [%d]}`, caps[i%len(caps)], i)
		t0 := time.Now()
		r, err := client.Post(srv.URL+"/v1/generate", "application/json", strings.NewReader(body))
		if err != nil {
			t.Errorf("request %d: %v", i, err)
			return 0, 0
		}
		var resp Response
		err = json.NewDecoder(r.Body).Decode(&resp)
		r.Body.Close()
		if r.StatusCode == 200 && (err != nil || len(resp.Videos) != 1 || len(resp.Videos[0].Frames) != p.Recipe.Frames) {
			t.Errorf("request %d: a 200 without its video (%v)", i, err)
		}
		return r.StatusCode, time.Since(t0)
	}

	// one request at a time
	const seqN = 60
	t0 := time.Now()
	var seqLat []time.Duration
	for i := 0; i < seqN; i++ {
		code, d := one(i)
		if code != 200 {
			t.Fatalf("sequential request %d: %d", i, code)
		}
		seqLat = append(seqLat, d)
	}
	seqRate := seqN / time.Since(t0).Seconds()

	// 64 clients, 500 requests: first alone, then with bad ones and hang-ups beside them
	const clients, total = 64, 500
	burst := func(base int) ([]int, []time.Duration, time.Duration) {
		var next atomic.Int64
		lat := make([]time.Duration, total)
		codes := make([]int, total)
		t0 := time.Now()
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= total {
						return
					}
					codes[i], lat[i] = one(base + i)
				}
			}()
		}
		wg.Wait()
		return codes, lat, time.Since(t0)
	}
	cleanCodes, cleanLat, cleanWall := burst(1000)
	for i, c := range cleanCodes {
		if c != 200 {
			t.Errorf("clean load, request %d: status %d", i, c)
		}
	}
	stop := make(chan struct{})
	var bad sync.WaitGroup
	badCodes := map[string]map[int]int{}
	var badMu sync.Mutex
	note := func(kind string, code int) {
		badMu.Lock()
		if badCodes[kind] == nil {
			badCodes[kind] = map[int]int{}
		}
		badCodes[kind][code]++
		badMu.Unlock()
	}
	emb := "[" + strings.TrimSuffix(strings.Repeat("[0.1, 0.2, 0.3],", 2), ",") + "]" // text_dim 3, not 32
	badBodies := map[string]string{
		"malformed JSON":        `{"captions": ["a red disk moving right"`,
		"too many frames":       `{"captions": ["a red disk moving right"], "frames": 1000}`,
		"wrong embedding shape": `{"embeddings": [` + emb + `]}`,
	}
	for kind, body := range badBodies {
		bad.Add(1)
		go func() {
			defer bad.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := client.Post(srv.URL+"/v1/generate", "application/json", strings.NewReader(body))
				if err != nil {
					t.Errorf("%s: %v", kind, err)
					return
				}
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
				note(kind, r.StatusCode)
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	bad.Add(1)
	go func() { // clients that hang up before their answer
		defer bad.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i%20)*time.Millisecond)
			req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/generate", strings.NewReader(`{"captions": ["a blue disk moving right"]}`))
			r, err := client.Do(req)
			if err == nil {
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
				note("hang-up (answered before it)", r.StatusCode)
			} else {
				note("hang-up", 0)
			}
			cancel()
			time.Sleep(50 * time.Millisecond)
		}
	}()
	codes, lat, wall := burst(0)
	close(stop)
	bad.Wait()
	answered := 0
	for i, c := range codes {
		if c == 200 {
			answered++
		} else {
			t.Errorf("request %d: status %d", i, c)
		}
	}
	for kind, cs := range badCodes {
		for c := range cs {
			if kind != "hang-up" && !strings.HasPrefix(kind, "hang-up") && (c < 400 || c >= 500) {
				t.Errorf("%s answered %d", kind, c)
			}
		}
	}
	pct := func(d []time.Duration, q float64) float64 {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return float64(s[int(q*float64(len(s)-1))].Microseconds()) / 1e3
	}
	mres, _ := client.Get(srv.URL + "/metrics")
	mb, _ := io.ReadAll(mres.Body)
	mres.Body.Close()
	var batches, videos string
	for _, l := range strings.Split(string(mb), "\n") {
		if strings.HasPrefix(l, "fewstep_batches_total ") {
			batches = l[len("fewstep_batches_total "):]
		}
		if strings.HasPrefix(l, "fewstep_videos_total ") {
			videos = l[len("fewstep_videos_total "):]
		}
	}
	rep := map[string]any{
		"student":    "configs/demo.yaml's recipe (dmd, fewstep, 4 steps) on configs/teacher's weights, latents [48, 8, 4, 4], CPU",
		"sequential": map[string]any{"requests": seqN, "req_per_s": seqRate, "p50_ms": pct(seqLat, 0.5), "p95_ms": pct(seqLat, 0.95)},
		"load": map[string]any{"clients": clients, "requests": total, "wall_s": cleanWall.Seconds(),
			"req_per_s": float64(total) / cleanWall.Seconds(), "p50_ms": pct(cleanLat, 0.5), "p95_ms": pct(cleanLat, 0.95), "p99_ms": pct(cleanLat, 0.99),
			"speedup_vs_one_at_a_time": float64(total) / cleanWall.Seconds() / seqRate},
		"load_with_bad_requests": map[string]any{"clients": clients, "requests": total, "answered_200": answered, "wall_s": wall.Seconds(),
			"req_per_s": float64(total) / wall.Seconds(), "p50_ms": pct(lat, 0.5), "p95_ms": pct(lat, 0.95), "p99_ms": pct(lat, 0.99),
			"speedup_vs_one_at_a_time": float64(total) / wall.Seconds() / seqRate},
		"bad_requests": badCodes,
		"metrics":      map[string]string{"batches_total": batches, "videos_total": videos},
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	t.Logf("load test:\n%s", b)
	if out := os.Getenv("FEWSTEP_LOADTEST_OUT"); out != "" {
		os.WriteFile(out, append(b, '\n'), 0o644)
	}
}
