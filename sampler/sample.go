package sampler

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

// Net is a velocity network on a device; DiTNet adapts a models.DiT, tests use analytic ones.
type Net interface {
	Device() kernels.Device
	// Velocity: x [B,C,F,H,W], t [B,F] (timesteps 0..1000), ctx [B,L,TextDim], all on Device()
	// → v [B,C,F,H,W], owned by the Net and valid until its next call.
	Velocity(x, t, ctx *kernels.Tensor) *kernels.Tensor
}

// Batch is what to sample: B videos of one latent shape, their prompts and their seeds.
type Batch struct {
	C, F, H, W int
	L, TextDim int
	Text       []float32 // [B, L, TextDim] conditional embeddings (zero-padded to L)
	Null       []float32 // [L, TextDim] the null/empty-prompt embedding; needed when CFG ≠ 1
	Seeds      []int64   // [B]: video b's noise comes from Seeds[b] alone, whatever the batch
}

// B is the number of videos.
func (b *Batch) B() int { return len(b.Seeds) }

// Method names a sampler.
type Method string

const (
	// Euler integrates the flow ODE over EulerSigmas(Steps, Shift): x ← x + (σ_{i+1} − σ_i)·v.
	// For teachers (flowmatch-trained networks), at any step count.
	Euler Method = "euler"
	// FewStep visits DenoisingList(Steps, Shift): predict x0 = x − σ_i·v, re-noise it to σ_{i+1}
	// with fresh noise, return the last x0. For DMD / DMD+adversarial / odeinit / Self-Forcing
	// students, which were trained on exactly this rollout ("backward simulation").
	FewStep Method = "fewstep"
	// FewStepODE visits the same list but re-noises with the noise the network predicted,
	// ε̂ = x + (1 − σ_i)·v, instead of fresh noise (DDIM with η = 0): x_{i+1} = (1 − σ_{i+1})·x0 +
	// σ_{i+1}·ε̂, which is an Euler step of the flow ODE from σ_i to σ_{i+1}. Deterministic given the
	// first noise; the last step returns x0. For the same students as FewStep.
	FewStepODE Method = "fewstep-ode"
	// Consistency is LCM's multistep consistency sampling: like FewStep with x0 replaced by
	// f(x, σ) = c_skip(σ)·x + c_out(σ)·x0_pred (ConsistencyScalings), σ snapped to the student's
	// training grid (GridN levels). For consistency students.
	Consistency Method = "consistency"
	// Stream is FewStep chunk by chunk with the causal model's KV cache (see Stream); for the
	// block-causal Self-Forcing / odeinit student.
	Stream Method = "stream"
)

// Methods are the samplers, in the order help texts list them.
var Methods = []Method{Euler, FewStep, FewStepODE, Consistency, Stream}

// ParseMethod is the sampler named s; an unknown name is an error that lists the known ones.
func ParseMethod(s string) (Method, error) {
	for _, m := range Methods {
		if string(m) == s {
			return m, nil
		}
	}
	names := make([]string, len(Methods))
	for i, m := range Methods {
		names[i] = string(m)
	}
	return "", fmt.Errorf("sampler %q is not one of %s", s, strings.Join(names, " | "))
}

// Options choose the sampler and its schedule.
type Options struct {
	Method Method
	Steps  int     // Euler: N steps; FewStep/Consistency/Stream: the length k of the denoising list
	CFG    float64 // w in v = v_u + w·(v_c − v_u); 0 or 1 = no guidance (one forward of B)
	Shift  float64 // schedule shift s (0 or 1 = none)
	Sigmas []float64
	// Sigmas, when set, overrides Steps and Shift: Euler's grid (decreasing, last value 0) or the
	// denoising list of the other methods (decreasing, > 0).
	GridN int // Consistency: snap the list to this Euler grid (consistency's grid_n, 50); 0 = no snapping

	// Record (Euler only) lists σ levels of the grid at which x is copied to Result.Traj (e.g. the
	// levels of a denoising list, for ODE pairs); σ = 0 records the final sample. Every level must be
	// on the grid (put them in Sigmas).
	Record []float64

	// Stream only.
	ChunkFrames  int     // latent frames per chunk (3)
	LocalFrames  int     // KV window in frames (0 = unbounded)
	SinkFrames   int     // first frames never evicted
	ContextNoise float64 // σ at which a finished chunk is re-encoded into the cache (0 = clean)
	// OnChunk, when set, receives each finished chunk j as soon as it is sampled: x0 [B, C, k, H, W]
	// on the host (valid during the call). An error stops the stream and is returned.
	OnChunk func(j int, x0 []float32) error

	// Ctx, when set, is checked before every network evaluation: cancelled, the sampler stops and
	// returns its error.
	Ctx context.Context
}

// alive is o.Ctx's error (nil without a context).
func (o *Options) alive() error {
	if o.Ctx == nil {
		return nil
	}
	return o.Ctx.Err()
}

// Result is a batch of sampled latents and what they cost.
type Result struct {
	Latents []float32   // [B, C, F, H, W]
	Sigmas  []float64   // the schedule used
	NFE     int         // network evaluations per video (cond and uncond counted apart; cache re-encodes too)
	Millis  float64     // wall milliseconds per video, noise draw to latents on the host
	Traj    [][]float32 // Euler with Record: x [B,C,F,H,W] at each recorded level, in Record's order
}

// Schedule resolves the schedule the options describe (Euler: N+1 values ending at 0; others: k).
func (o Options) Schedule() ([]float64, error) {
	if len(o.Sigmas) > 0 {
		s := append([]float64(nil), o.Sigmas...)
		if o.Method == Euler {
			if s[len(s)-1] != 0 {
				return nil, fmt.Errorf("sampler: euler: explicit σ grid %v must end at 0", s)
			}
			return s, checkSigmas("euler", s)
		}
		if o.Method == Consistency {
			s = Snap(s, o.GridN, o.Shift)
		}
		if s[len(s)-1] <= 0 {
			return nil, fmt.Errorf("sampler: %s: denoising list %v must stay above 0", o.Method, s)
		}
		return s, checkSigmas(string(o.Method), s)
	}
	if o.Steps < 1 {
		return nil, fmt.Errorf("sampler: %s: steps = %d, need ≥ 1", o.Method, o.Steps)
	}
	switch o.Method {
	case Euler:
		return EulerSigmas(o.Steps, o.Shift), nil
	case FewStep, FewStepODE, Stream:
		return DenoisingList(o.Steps, o.Shift), nil
	case Consistency:
		s := Snap(DenoisingList(o.Steps, o.Shift), o.GridN, o.Shift)
		return s, checkSigmas("consistency", s)
	}
	return nil, fmt.Errorf("sampler: unknown method %q (euler | fewstep | fewstep-ode | consistency | stream)", o.Method)
}

func (o Options) guided() bool { return o.CFG != 0 && o.CFG != 1 }

// Sample draws B videos. Stream needs a CausalNet; the others any Net.
func Sample(net Net, b *Batch, o Options) (*Result, error) {
	if err := b.check(o.guided()); err != nil {
		return nil, err
	}
	sig, err := o.Schedule()
	if err != nil {
		return nil, err
	}
	if o.Method == Stream {
		cn, ok := net.(CausalNet)
		if !ok {
			return nil, fmt.Errorf("sampler: stream needs a causal network with a KV cache, got %T", net)
		}
		return stream(cn, b, o, sig)
	}
	start := time.Now()
	dev := net.Device()
	B, F := b.B(), b.F
	shape := []int{B, b.C, F, b.H, b.W}
	n := kernels.Numel(shape)
	g := newGuide(dev, net.Velocity, b, o.CFG, F)
	defer g.free()
	x := dev.Alloc(kernels.F32, shape...)
	x0 := dev.Alloc(kernels.F32, shape...)
	eps := dev.Alloc(kernels.F32, shape...)
	defer dev.Free(x)
	defer dev.Free(x0)
	defer dev.Free(eps)
	host := make([]float32, n)

	drawNoise(host, b.Seeds, 0, 0)
	dev.FromHost(x, host) // x = ε at σ_0 (= 1 unless the schedule says otherwise)
	steps := len(sig)
	if o.Method == Euler {
		steps = len(sig) - 1
	}
	var traj [][]float32
	if len(o.Record) > 0 {
		if o.Method != Euler {
			return nil, fmt.Errorf("sampler: record: only the euler sampler records trajectories")
		}
		traj = make([][]float32, len(o.Record))
		for _, s := range o.Record {
			if !slices.Contains(sig, s) {
				return nil, fmt.Errorf("sampler: record: σ %g is not on the Euler grid %v", s, sig)
			}
		}
	}
	record := func(i int) {
		for r, s := range o.Record {
			if s == sig[i] && traj[r] == nil {
				traj[r] = make([]float32, n)
				dev.ToHost(traj[r], x)
			}
		}
	}
	for i := 0; i < steps; i++ {
		if err := o.alive(); err != nil {
			return nil, fmt.Errorf("sampler: %s: %w", o.Method, err)
		}
		record(i)
		v := g.velocity(x, sig[i]) // [B,C,F,H,W]
		switch o.Method {
		case Euler:
			dev.Axpy(x, float32(sig[i+1]-sig[i]), v) // x ← x + (σ_{i+1} − σ_i)·v
			continue
		case FewStepODE:
			if i == steps-1 {
				dev.Axpy(x, float32(-sig[i]), v) // x0 = x − σ·v
			} else {
				dev.Axpy(x, float32(sig[i+1]-sig[i]), v) // x ← x + (σ_{i+1} − σ_i)·v
			}
			continue
		case FewStep:
			dev.Combine(x0, x, v, []float32{1}, []float32{float32(-sig[i])}) // x0 = x − σ·v
		case Consistency:
			cs, co := ConsistencyScalings(sig[i])
			// f = c_skip·x + c_out·(x − σ·v) = (c_skip + c_out)·x − c_out·σ·v
			dev.Combine(x0, x, v, []float32{float32(cs + co)}, []float32{float32(-co * sig[i])})
		}
		if i == steps-1 {
			dev.Copy(x, x0)
			break
		}
		drawNoise(host, b.Seeds, 0, i+1) // fresh ε for the re-noise to σ_{i+1}
		dev.FromHost(eps, host)
		s := float32(sig[i+1])
		dev.Combine(x, x0, eps, []float32{1 - s}, []float32{s}) // x = (1−σ)·x0 + σ·ε
	}
	if traj != nil {
		record(len(sig) - 1)
	}
	out := make([]float32, n)
	dev.ToHost(out, x)
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("sampler: %s: %w", o.Method, err)
	}
	return &Result{
		Latents: out, Sigmas: sig, Traj: traj,
		NFE:    steps * g.perCall(),
		Millis: float64(time.Since(start).Microseconds()) / 1e3 / float64(B),
	}, nil
}

func (b *Batch) check(guided bool) error {
	B := b.B()
	switch {
	case B == 0:
		return fmt.Errorf("sampler: empty batch (no seeds)")
	case b.C < 1 || b.F < 1 || b.H < 1 || b.W < 1 || b.L < 1 || b.TextDim < 1:
		return fmt.Errorf("sampler: bad batch shape C=%d F=%d H=%d W=%d L=%d text_dim=%d", b.C, b.F, b.H, b.W, b.L, b.TextDim)
	case len(b.Text) != B*b.L*b.TextDim:
		return fmt.Errorf("sampler: text has %d values, want B·L·text_dim = %d·%d·%d", len(b.Text), B, b.L, b.TextDim)
	case guided && len(b.Null) != b.L*b.TextDim:
		return fmt.Errorf("sampler: CFG needs the null embedding [L=%d, text_dim=%d], got %d values", b.L, b.TextDim, len(b.Null))
	}
	return nil
}

// drawNoise fills dst [B, n/B] with standard normals: row b from the stream (Seeds[b], chunk, draw),
// so a video's noise does not depend on its batch neighbours.
func drawNoise(dst []float32, seeds []int64, chunk, draw int) {
	per := len(dst) / len(seeds)
	for b, seed := range seeds {
		r := rand.New(rand.NewPCG(uint64(seed), uint64(chunk)<<32|uint64(draw)))
		row := dst[b*per : (b+1)*per]
		for i := range row {
			row[i] = float32(r.NormFloat64())
		}
	}
}

// guide runs a network with classifier-free guidance. With w ≠ 1 it runs ONE forward of 2B
// (x twice, [null; text] as context) and combines v = v_u + w·(v_c − v_u) = (1−w)·v_u + w·v_c.
type guide struct {
	dev     kernels.Device
	fwd     func(x, t, ctx *kernels.Tensor) *kernels.Tensor
	w       float32
	on      bool
	n       int             // numel of one half
	x2      *kernels.Tensor // [2B, C, F, H, W] (CFG only)
	t       *kernels.Tensor // [B or 2B, F]
	ctx     *kernels.Tensor // [B or 2B, L, TextDim]
	v       *kernels.Tensor // [B, C, F, H, W] guided velocity (CFG only)
	B, C, F int
	H, W    int
}

func newGuide(dev kernels.Device, fwd func(x, t, ctx *kernels.Tensor) *kernels.Tensor, b *Batch, w float64, frames int) *guide {
	B := b.B()
	g := &guide{dev: dev, fwd: fwd, w: float32(w), on: w != 0 && w != 1, B: B, C: b.C, F: frames, H: b.H, W: b.W}
	g.n = B * b.C * frames * b.H * b.W
	if !g.on {
		g.t = dev.Alloc(kernels.F32, B, frames)
		g.ctx = dev.Alloc(kernels.F32, B, b.L, b.TextDim)
		dev.FromHost(g.ctx, b.Text)
		return g
	}
	g.x2 = dev.Alloc(kernels.F32, 2*B, b.C, frames, b.H, b.W)
	g.v = dev.Alloc(kernels.F32, B, b.C, frames, b.H, b.W)
	g.t = dev.Alloc(kernels.F32, 2*B, frames)
	g.ctx = dev.Alloc(kernels.F32, 2*B, b.L, b.TextDim)
	lt := b.L * b.TextDim
	host := make([]float32, 2*B*lt)
	for i := 0; i < B; i++ {
		copy(host[i*lt:], b.Null) // rows 0..B−1: the unconditional branch
	}
	copy(host[B*lt:], b.Text) // rows B..2B−1: the conditional branch
	dev.FromHost(g.ctx, host)
	return g
}

// perCall is the number of network evaluations per video in one velocity call.
func (g *guide) perCall() int {
	if g.on {
		return 2
	}
	return 1
}

// velocity returns the (guided) velocity at x [B,C,F,H,W], every frame at σ.
func (g *guide) velocity(x *kernels.Tensor, sigma float64) *kernels.Tensor {
	g.dev.Fill(g.t, float32(1000*sigma))
	if !g.on {
		return g.fwd(x, g.t, g.ctx)
	}
	shape := x.Shape
	g.dev.Copy(g.x2.View(0, shape...), x)
	g.dev.Copy(g.x2.View(g.n, shape...), x)
	v2 := g.fwd(g.x2, g.t, g.ctx)                          // [2B, C, F, H, W]
	vu, vc := v2.View(0, shape...), v2.View(g.n, shape...) // unconditional, conditional
	g.dev.Combine(g.v, vu, vc, []float32{1 - g.w}, []float32{g.w})
	return g.v
}

// encode runs the network on x at σ without using the output (the cache re-encode of a stream).
func (g *guide) encode(x *kernels.Tensor, sigma float64) {
	g.dev.Fill(g.t, float32(1000*sigma))
	if !g.on {
		g.fwd(x, g.t, g.ctx)
		return
	}
	g.dev.Copy(g.x2.View(0, x.Shape...), x)
	g.dev.Copy(g.x2.View(g.n, x.Shape...), x)
	g.fwd(g.x2, g.t, g.ctx)
}

func (g *guide) free() {
	for _, t := range []*kernels.Tensor{g.x2, g.t, g.ctx, g.v} {
		if t != nil {
			g.dev.Free(t)
		}
	}
}
