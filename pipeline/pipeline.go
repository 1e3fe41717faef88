package pipeline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/sampler"
)

// Pipeline is a student on a device with its recipe: Generate and Stream turn prompt embeddings
// into videos. One call runs at a time (the calls lock); a server batches prompts into one call.
type Pipeline struct {
	Recipe  *Recipe
	Config  models.Config
	Model   *models.DiT
	Dev     kernels.Device
	Weights string // the file the weights came from ("" when built with New)

	mu  sync.Mutex
	net *sampler.DiTNet
}

// weightFiles are the names Open looks for in a folder, in order: an export's, then a checkpoint's
// EMA, then its raw student.
var weightFiles = []string{"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json", "ema.safetensors", "student.safetensors"}

// Open loads the student of a folder on a device ("cpu", "cuda", "cuda:N"): an export of `fewstep
// export` or a checkpoint folder, each holding config.json and recipe.json beside the weights.
func Open(dir, device string) (*Pipeline, error) {
	dev, err := OpenBackend(device)
	if err != nil {
		return nil, err
	}
	return OpenOn(dir, dev)
}

// OpenOn is Open on a device already open.
func OpenOn(dir string, dev kernels.Device) (*Pipeline, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	weights := ""
	if !st.IsDir() { // a weights file: its folder holds the rest
		weights, dir = dir, filepath.Dir(dir)
	} else {
		weights = findWeights(dir)
		if weights == "" && findWeights(filepath.Join(dir, "export")) != "" { // a run folder: its export (fewstep export --from RUN's default)
			return OpenOn(filepath.Join(dir, "export"), dev)
		}
		if weights == "" {
			return nil, fmt.Errorf("pipeline: %s holds none of %v (a run folder: export it first, fewstep export --from %s, and give RUN or RUN/export)", dir, weightFiles, dir)
		}
	}
	rec, err := LoadRecipe(filepath.Join(dir, RecipeFile))
	if err != nil {
		return nil, fmt.Errorf("pipeline: %s: %w (fewstep export writes it beside config.json)", dir, err)
	}
	cfg, err := models.ReadWanConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	if err := rec.CheckModel(cfg); err != nil {
		return nil, fmt.Errorf("pipeline: %s: %w", dir, err)
	}
	m := models.New(dev, cfg, false)
	if err := m.Load(weights); err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	p, err := New(m, rec)
	if err != nil {
		return nil, err
	}
	p.Weights = weights
	return p, nil
}

// New wraps a loaded model with a recipe. On a CUDA device the GEMMs run on bf16 copies of the
// weights, made once and kept (the weights are frozen), with fp32 accumulation.
func New(m *models.DiT, rec *Recipe) (*Pipeline, error) {
	if err := rec.Validate(); err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	if err := rec.CheckModel(m.Cfg); err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	ForInference(m)
	return &Pipeline{Recipe: rec, Config: m.Cfg, Model: m, Dev: m.Dev, net: sampler.NewDiTNet(m, rec.NetChunkFrames())}, nil
}

// ForInference readies a loaded model for sampling: on a CUDA device its GEMMs run on bf16 copies
// of the weights, made once and kept (the weights are declared frozen), with fp32 accumulation;
// other devices are left as they are.
func ForInference(m *models.DiT) {
	if g, ok := m.Dev.(*cuda.Device); ok {
		g.GEMM = cuda.GEMMBF16
		g.MarkWeights(m.W)
		g.FrozenWeights = true
	}
}

// UseGraphs replays whole-video forwards from CUDA graphs on a CUDA device (one per request shape,
// captured at its first use, after one eager run); it does nothing elsewhere. Worth it
// where launches dominate (small models, short videos); call it before the first Generate.
func (p *Pipeline) UseGraphs() {
	g, ok := p.Dev.(*cuda.Device)
	if !ok {
		return
	}
	p.net.Capture = func(fn func()) (func() error, func(), error) {
		gr, err := g.Capture(fn)
		if err != nil {
			return nil, nil, err
		}
		return gr.Launch, gr.Destroy, nil
	}
}

// UseJobWindow streams every later Generate and Stream with the job's KV-cache window where the job
// sets one (model.local_attn_frames > 0, with model.sink_frames), over the recipe's, as fewstep sample
// and eval do (JobWindow); p.Recipe becomes a copy that records the window. Call it before the first
// Generate or Stream.
func (p *Pipeline) UseJobWindow(job *config.Job) error {
	o := p.Recipe.Options(0)
	if err := JobWindow(&o, job); err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	r := *p.Recipe
	r.LocalFrames, r.SinkFrames = o.LocalFrames, o.SinkFrames
	p.Recipe = &r
	return nil
}

// Close releases the device memory of the passes and the cache (the model's weights stay with Model).
func (p *Pipeline) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.net.Free()
}

// Request is what to generate: one video per prompt.
type Request struct {
	// Prompts are the prompts' text embeddings, each [n, TextDim] row-major with 1 ≤ n ≤ TextLen
	// tokens (zero-padded to TextLen here); EncodeCaption makes them in the synthetic space.
	Prompts [][]float32
	// Seeds: prompt i's noise comes from Seeds[i] alone, whatever else is in the request.
	Seeds []int64
	// Frames is the latent frames per video (0 = the recipe's); a stream may run longer than
	// training, in whole chunks.
	Frames int
	// Steps is the number of denoising steps (0 = the recipe's list; fewer take levels of it
	// spread from its first, SubLists).
	Steps int
	// Null is the unconditional embedding [TextLen, TextDim] for guidance (nil = zeros, the toy
	// encoder's empty prompt); unused when the recipe's cfg is 1.
	Null []float32
}

// Output is a generated batch: raw latents (the normalisation undone) and, where the latent space
// decodes, pixels.
type Output struct {
	C, F, H, W int
	Latents    []float32   // [B, C, F, H, W]
	Pixels     [][]float32 // per video [3, F, 4H, 4W] in [0, 1] (synthetic space only; nil otherwise)
	NFE        int         // network evaluations per video
	Millis     float64     // wall milliseconds per video
}

// Chunk is one piece of a stream: latent frames Frame0 ..+Frames of every video of the request.
type Chunk struct {
	Index, Frame0, Frames int
	C, H, W               int
	Latents               []float32   // [B, C, Frames, H, W], raw
	Pixels                [][]float32 // per video [3, Frames, 4H, 4W] (synthetic space only)
}

// ErrBadRequest marks errors in a Request (wrong shapes, limits); a server answers them with 4xx.
var ErrBadRequest = errors.New("bad request")

func badRequest(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, a...))
}

// batch checks a request and makes the sampler's batch and options.
func (p *Pipeline) batch(req *Request, stream bool) (*sampler.Batch, sampler.Options, error) {
	r := p.Recipe
	B := len(req.Prompts)
	switch {
	case B == 0:
		return nil, sampler.Options{}, badRequest("no prompts")
	case len(req.Seeds) != B:
		return nil, sampler.Options{}, badRequest("%d prompts but %d seeds", B, len(req.Seeds))
	case req.Frames < 0 || req.Steps < 0:
		return nil, sampler.Options{}, badRequest("frames %d, steps %d: must be ≥ 0", req.Frames, req.Steps)
	}
	F := req.Frames
	if F == 0 {
		F = r.Frames
	}
	if stream || r.Sampler == string(sampler.Stream) {
		if !r.Causal {
			return nil, sampler.Options{}, badRequest("streaming needs a causal student; this one (%s) is bidirectional", r.Objective)
		}
		if F%r.ChunkFrames != 0 {
			return nil, sampler.Options{}, badRequest("%d frames is not a whole number of %d-frame chunks", F, r.ChunkFrames)
		}
	}
	L, D := r.TextLen, r.TextDim
	b := &sampler.Batch{C: r.LatentChannels, F: F, H: r.Height, W: r.Width, L: L, TextDim: D,
		Text: make([]float32, B*L*D), Null: req.Null, Seeds: append([]int64(nil), req.Seeds...)}
	for i, e := range req.Prompts {
		if len(e) == 0 || len(e)%D != 0 || len(e)/D > L {
			return nil, sampler.Options{}, badRequest("prompt %d: %d values, want [n, text_dim %d] with 1 ≤ n ≤ text_len %d", i, len(e), D, L)
		}
		copy(b.Text[i*L*D:], e)
	}
	if b.Null == nil {
		b.Null = make([]float32, L*D)
	} else if len(b.Null) != L*D {
		return nil, sampler.Options{}, badRequest("null embedding: %d values, want [text_len %d, text_dim %d]", len(b.Null), L, D)
	}
	o := r.Options(req.Steps)
	if stream {
		o.Method = sampler.Stream
	}
	if _, err := o.Schedule(); err != nil {
		return nil, o, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return b, o, nil
}

// raw undoes the normalisation of latents [N, C, ...] in place.
func (p *Pipeline) raw(lat []float32, N int) {
	r := p.Recipe
	if len(r.Mean) == 0 {
		return
	}
	per := len(lat) / (N * r.LatentChannels)
	for i := 0; i < N*r.LatentChannels; i++ {
		c := i % r.LatentChannels
		for j := i * per; j < (i+1)*per; j++ {
			lat[j] = float32(float64(lat[j])*r.Std[c] + r.Mean[c])
		}
	}
}

// pixels decodes latents [N, 48, F, h, w] of the synthetic space (nil for another space).
func (p *Pipeline) pixels(lat []float32, N, F int) [][]float32 {
	r := p.Recipe
	if !r.Decodes() {
		return nil
	}
	per := r.LatentChannels * F * r.Height * r.Width
	out := make([][]float32, N)
	for i := range out {
		out[i] = data.DecodeLatent(lat[i*per:(i+1)*per], F, r.Height, r.Width)
	}
	return out
}

// Generate samples one video per prompt with the recipe's sampler (a causal student's stream
// sampler too, returning the whole video at the end).
func (p *Pipeline) Generate(ctx context.Context, req Request) (*Output, error) {
	b, o, err := p.batch(&req, false)
	if err != nil {
		return nil, err
	}
	o.Ctx = ctx
	p.mu.Lock()
	defer p.mu.Unlock()
	res, err := sampler.Sample(p.net, b, o)
	if err != nil {
		return nil, err
	}
	p.raw(res.Latents, b.B())
	r := p.Recipe
	return &Output{C: r.LatentChannels, F: b.F, H: r.Height, W: r.Width, Latents: res.Latents,
		Pixels: p.pixels(res.Latents, b.B(), b.F), NFE: res.NFE, Millis: res.Millis}, nil
}

// Stream samples a causal student chunk by chunk and hands each chunk to fn as soon as it is made
// (fn's error, or ctx's, stops the stream and is returned). It returns the NFE per video and the
// wall time to the first chunk.
func (p *Pipeline) Stream(ctx context.Context, req Request, fn func(Chunk) error) (nfe int, first time.Duration, err error) {
	b, o, err := p.batch(&req, true)
	if err != nil {
		return 0, 0, err
	}
	o.Ctx = ctx
	r, B, k := p.Recipe, b.B(), p.Recipe.ChunkFrames
	start := time.Now()
	o.OnChunk = func(j int, x0 []float32) error {
		if j == 0 {
			first = time.Since(start)
		}
		lat := append([]float32(nil), x0...) // [B, C, k, H, W]
		p.raw(lat, B)
		return fn(Chunk{Index: j, Frame0: j * k, Frames: k, C: r.LatentChannels, H: r.Height, W: r.Width,
			Latents: lat, Pixels: p.pixels(lat, B, k)})
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	res, err := sampler.Sample(p.net, b, o)
	if err != nil {
		return 0, first, err
	}
	return res.NFE, first, nil
}

// EncodeCaption is the synthetic space's toy text encoder: a caption ("a red circle moving left",
// docs/data.md) as [n words, TextDim] (at most TextLen words).
func (p *Pipeline) EncodeCaption(caption string) ([]float32, error) {
	r := p.Recipe
	if !r.Decodes() {
		return nil, badRequest("captions need the synthetic latent space's text encoder; this student's space is %s: send embeddings", r.LatentSpace)
	}
	if _, _, _, err := data.ParseCaption(caption); err != nil {
		return nil, badRequest("caption %q: %v", caption, err)
	}
	emb, n := data.EncodeTextTokens(caption, r.TextDim)
	if n > r.TextLen {
		emb = emb[:r.TextLen*r.TextDim]
	}
	return emb, nil
}

// findWeights is the path of the first of weightFiles that folder dir holds, "" if none.
func findWeights(dir string) string {
	for _, n := range weightFiles {
		if p := filepath.Join(dir, n); fileExists(p) {
			return p
		}
	}
	return ""
}
