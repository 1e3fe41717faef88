package pipeline

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/sampler"
)

// fixture writes a folder as fewstep export makes it: random tiny weights for the synthetic space,
// config.json, and the recipe of the objective's job.
func fixture(t *testing.T, objective string, params map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	j := jobFor(objective, params)
	j.Data.Synth.Size, j.Data.Synth.Frames, j.Data.Synth.TextDim, j.Data.TextLen = 16, 4, 8, 4
	j.Model.ChunkFrames = 2
	rec, err := WriteRecipe(dir, j)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = rec.LatentChannels, rec.LatentChannels, rec.TextDim, rec.TextLen
	m := models.New(kernels.CPU(), cfg, false)
	m.InitRandom(3, 0.05)
	if err := m.Save(filepath.Join(dir, "diffusion_pytorch_model.safetensors"), kernels.F32); err != nil {
		t.Fatal(err)
	}
	if err := models.WriteWanConfig(filepath.Join(dir, "config.json"), cfg); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestGenerate(t *testing.T) {
	p, err := Open(fixture(t, "dmd", nil), "cpu")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a := caption(t, p, "a red disk moving left")
	b := caption(t, p, "a blue square moving up")
	out, err := p.Generate(context.Background(), Request{Prompts: [][]float32{a, b}, Seeds: []int64{5, 6}})
	if err != nil {
		t.Fatal(err)
	}
	if out.C != 48 || out.F != 4 || out.H != 4 || out.W != 4 || len(out.Latents) != 2*48*4*16 || out.NFE != 4 || len(out.Pixels) != 2 ||
		len(out.Pixels[0]) != 3*4*16*16 {
		t.Fatalf("output [%d %d %d %d], %d values, NFE %d, %d videos", out.C, out.F, out.H, out.W, len(out.Latents), out.NFE, len(out.Pixels))
	}
	// the same as the sampler on the model with the recipe's options
	net := sampler.NewDiTNet(p.Model, 0)
	defer net.Free()
	text := make([]float32, 2*4*8)
	copy(text, a)
	copy(text[32:], b)
	res, err := sampler.Sample(net, &sampler.Batch{C: 48, F: 4, H: 4, W: 4, L: 4, TextDim: 8, Text: text, Seeds: []int64{5, 6}}, p.Recipe.Options(0))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range res.Latents {
		if v != out.Latents[i] {
			t.Fatalf("latent %d: pipeline %g, sampler %g", i, out.Latents[i], v)
		}
	}
	// video 1 alone: its seed alone decides its noise
	one, err := p.Generate(context.Background(), Request{Prompts: [][]float32{b}, Seeds: []int64{6}, Steps: 2})
	if err != nil || one.NFE != 2 {
		t.Fatalf("2 steps: %v, NFE %d", err, one.NFE)
	}
}

func TestStream(t *testing.T) {
	p, err := Open(fixture(t, "selfforcing", map[string]any{"context_noise": 0.1}), "cpu")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a := caption(t, p, "a green cross moving down")
	b := caption(t, p, "a yellow disk moving right")
	req := Request{Prompts: [][]float32{a, b}, Seeds: []int64{1, 2}, Frames: 6} // 3 chunks, longer than training
	whole, err := p.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var chunks []Chunk
	nfe, first, err := p.Stream(context.Background(), req, func(c Chunk) error { chunks = append(chunks, c); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 3 || nfe != whole.NFE || first <= 0 {
		t.Fatalf("%d chunks, NFE %d vs %d, first chunk after %v", len(chunks), nfe, whole.NFE, first)
	}
	plane := 16
	for _, c := range chunks { // chunk j of video b = frames 2j, 2j+1 of the whole video, every channel
		if c.Frame0 != 2*c.Index || c.Frames != 2 || len(c.Pixels) != 2 {
			t.Fatalf("chunk %+v", c)
		}
		for bc := 0; bc < 2*48; bc++ {
			for f := 0; f < 2; f++ {
				for i := 0; i < plane; i++ {
					got := c.Latents[(bc*2+f)*plane+i]
					want := whole.Latents[(bc*6+c.Frame0+f)*plane+i]
					if got != want {
						t.Fatalf("chunk %d, row %d, frame %d: %g, whole video %g", c.Index, bc, f, got, want)
					}
				}
			}
		}
	}
	// the callback's error and a cancelled context stop the stream
	stop := errors.New("client gone")
	n := 0
	if _, _, err := p.Stream(context.Background(), req, func(Chunk) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("callback error: %v after %d chunks", err, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n = 0
	_, _, err = p.Stream(ctx, req, func(Chunk) error { n++; cancel(); return nil })
	if !errors.Is(err, context.Canceled) || n != 1 {
		t.Fatalf("cancelled: %v after %d chunks", err, n)
	}
}

func TestBadRequests(t *testing.T) {
	p, err := Open(fixture(t, "dmd", nil), "cpu")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a := caption(t, p, "a red disk moving left")
	ctx := context.Background()
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{}, "no prompts"},
		{Request{Prompts: [][]float32{a}}, "1 prompts but 0 seeds"},
		{Request{Prompts: [][]float32{a[:5]}, Seeds: []int64{1}}, "prompt 0: 5 values"},
		{Request{Prompts: [][]float32{make([]float32, 5*8)}, Seeds: []int64{1}}, "text_len 4"},
		{Request{Prompts: [][]float32{a}, Seeds: []int64{1}, Frames: -1}, "frames -1"},
		{Request{Prompts: [][]float32{a}, Seeds: []int64{1}, Null: []float32{1}}, "null embedding"},
	} {
		_, err := p.Generate(ctx, c.req)
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want a bad request with %q", c.req, err, c.want)
		}
	}
	if _, _, err := p.Stream(ctx, Request{Prompts: [][]float32{a}, Seeds: []int64{1}}, func(Chunk) error { return nil }); !errors.Is(err, ErrBadRequest) {
		t.Errorf("stream of a bidirectional student: %v", err)
	}
	if _, err := p.EncodeCaption("a plaid disk moving left"); !errors.Is(err, ErrBadRequest) {
		t.Errorf("a caption outside the synthetic grammar: %v", err)
	}
	if _, err := Open(t.TempDir(), "cpu"); err == nil || !strings.Contains(err.Error(), "holds none of") {
		t.Errorf("an empty folder: %v", err)
	}
}

func caption(t *testing.T, p *Pipeline, c string) []float32 {
	t.Helper()
	e, err := p.EncodeCaption(c)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// UseJobWindow: a causal student trained with an unbounded cache (the recipe's window 0) streams an
// 8-frame video with the job's 4-frame window (model.local_attn_frames), as the sampler does with
// that window, and not as it does without one; a job without a window leaves the recipe's, and a
// window CheckWindow refuses is an error.
func TestUseJobWindow(t *testing.T) {
	p, err := Open(fixture(t, "selfforcing", nil), "cpu")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Recipe.LocalFrames != 0 || !p.Recipe.Causal {
		t.Fatalf("fixture recipe: window %d, causal %v", p.Recipe.LocalFrames, p.Recipe.Causal)
	}
	a := caption(t, p, "a green cross moving down")
	req := Request{Prompts: [][]float32{a}, Seeds: []int64{4}, Frames: 8}
	unbounded, err := p.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	job := jobFor("selfforcing", nil)
	if err := p.UseJobWindow(job); err != nil || p.Recipe.LocalFrames != 0 { // no window in the job
		t.Fatalf("job without a window: %v, recipe window %d", err, p.Recipe.LocalFrames)
	}
	job.Model.LocalAttnFrames, job.Model.SinkFrames = 4, 4
	if err := p.UseJobWindow(job); err == nil || !strings.Contains(err.Error(), "sink_frames") {
		t.Fatalf("sink 4 in a 4-frame window: %v", err)
	}
	job.Model.SinkFrames = 0
	if err := p.UseJobWindow(job); err != nil || p.Recipe.LocalFrames != 4 || p.Recipe.SinkFrames != 0 {
		t.Fatalf("UseJobWindow: %v, recipe window %d + %d", err, p.Recipe.LocalFrames, p.Recipe.SinkFrames)
	}
	windowed, err := p.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	net := sampler.NewDiTNet(p.Model, p.Recipe.ChunkFrames)
	defer net.Free()
	o := p.Recipe.Options(0)
	o.LocalFrames = 4
	text := make([]float32, 4*8)
	copy(text, a)
	res, err := sampler.Sample(net, &sampler.Batch{C: 48, F: 8, H: 4, W: 4, L: 4, TextDim: 8, Text: text, Null: make([]float32, 4*8), Seeds: []int64{4}}, o)
	if err != nil {
		t.Fatal(err)
	}
	differ := false
	for i, v := range res.Latents {
		if windowed.Latents[i] != v {
			t.Fatalf("latent %d: pipeline %g, sampler with the 4-frame window %g", i, windowed.Latents[i], v)
		}
		differ = differ || unbounded.Latents[i] != v
	}
	if !differ {
		t.Fatal("the 4-frame window gave the unbounded cache's video: the test cannot tell them apart")
	}
}

// A run folder opens as its export (RUN/export, fewstep export --from RUN's default), as sample
// --from RUN takes a run folder; a run folder not yet exported says how to export it.
func TestOpenRunFolder(t *testing.T) {
	run := t.TempDir()
	if err := os.Rename(fixture(t, "dmd", nil), filepath.Join(run, "export")); err != nil {
		t.Fatal(err)
	}
	p, err := Open(run, "cpu")
	if err != nil {
		t.Fatalf("a run folder with its export: %v", err)
	}
	if p.Recipe.Objective != "dmd" {
		t.Errorf("opened recipe %+v, want the export's (dmd)", p.Recipe)
	}
	bare := t.TempDir()
	if _, err := Open(bare, "cpu"); err == nil || !strings.Contains(err.Error(), "fewstep export --from "+bare) {
		t.Errorf("a run folder without its export: %v, want how to export it", err)
	}
}
