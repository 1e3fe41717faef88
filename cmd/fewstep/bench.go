package main

import (
	"fmt"
	"math/rand"
	"os"
	"sort"

	"github.com/fewstep/fewstep/pipeline"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
)

// `fewstep bench forward|attention`: GPU timings with CUDA events (median of --iters after --warmup),
// a table each (bench_report.go), or with --json one JSON line each, in the form
// shared/reference/wan_ref.py prints, so the two can be put side by side.

var benchCmd = &cobra.Command{Use: "bench", Short: "Time the engine on the GPU: forward, stream, attention, sample, train, allreduce (train and sample --dry count memory without one); a table, or --json"}

var benchForwardCmd = &cobra.Command{
	Use:   "forward",
	Short: "Time the DiT's forward (and with --train forward+backward) on random weights",
	Example: `  fewstep bench forward --preset wan2.1-1.3b --frames 3 --height 60 --width 104 --graph
  fewstep bench forward --preset small --frames 2 --height 64 --width 64 --ctx 512 --graph`,
	RunE: runBenchForward,
}

var benchStreamCmd = &cobra.Command{
	Use:   "stream",
	Short: "Time causal streaming generation: chunk by chunk, few steps each, with the KV cache",
	Long: `Self-Forcing-style streaming through the library (pipeline.Stream of a causal student on
random weights): each chunk of --chunk-frames latent frames starts from noise, takes --steps
few-step levels (predict x0, re-noise; ForwardChunk against the KV cache), then one more forward
of the clean chunk whose K/V are committed to the cache; each chunk's latents reach the host before
the next starts. Reports video frames per second and the time to the first chunk (DiT only: no
text encoder, no VAE).`,
	Example: `  fewstep bench stream --preset wan2.1-1.3b --height 60 --width 104 --chunk-frames 3 --chunks 7 --steps 4`,
	RunE:    runBenchStream,
}

var benchAttnCmd = &cobra.Command{
	Use:     "attention",
	Short:   "Time the attention forward (and backward) alone: milliseconds and TFLOP/s",
	Example: `  fewstep bench attention --tokens 32760 --heads 12 --head-dim 128`,
	RunE:    runBenchAttention,
}

func init() {
	f := benchForwardCmd.Flags()
	addShapeFlags(f)
	f.Int("chunk-frames", 0, "block-causal attention over chunks of this many frames (0: bidirectional)")
	f.Bool("graph", false, "capture the forward in a CUDA graph and time its replays")
	f.Bool("train", false, "also time forward+backward (parameter gradients)")
	f.Bool("profile", false, "print the time per kernel of one more forward (and backward) to stderr")
	st := benchStreamCmd.Flags()
	st.String("preset", "wan2.1-1.3b", "architecture preset")
	st.Int("height", 60, "latent height (480p: 60)")
	st.Int("width", 104, "latent width (480p: 104)")
	st.Int("ctx", 512, "context tokens")
	st.Int("chunk-frames", 3, "latent frames per chunk")
	st.Int("chunks", 7, "chunks (7 × 3 = 21 latent frames = 81 video frames)")
	st.Int("steps", 4, "denoising steps per chunk")
	st.Int("local-frames", 0, "KV cache window in frames (0: unbounded)")
	st.Int("sink-frames", 0, "frames kept at the start of the window")
	for _, c := range []*cobra.Command{benchForwardCmd, benchAttnCmd, benchStreamCmd} {
		c.Flags().String("device", "cuda", "cuda or cuda:N")
		c.Flags().String("gemm", "bf16", "fp32 GEMMs: bf16 (tensor cores, bf16 operands), tf32, or fp32 (exact)")
		c.Flags().Int("iters", 10, "timed repetitions (the median is reported)")
		c.Flags().Int("warmup", 3, "untimed repetitions first")
	}
	a := benchAttnCmd.Flags()
	a.Int("batch", 1, "batch size")
	a.Int("tokens", 32760, "query and key tokens")
	a.Int("heads", 12, "heads")
	a.Int("head-dim", 128, "head dim")
	a.String("dtype", "bf16", "storage of q, k, v: bf16 or fp32")
	a.Int("chunk-tokens", 0, "block-causal mask with chunks of this many tokens (0: full)")
	a.Bool("backward", true, "also time the backward")
	benchCmd.AddCommand(benchForwardCmd, benchAttnCmd, benchStreamCmd)
	rootCmd.AddCommand(benchCmd)
}

func benchDevice(cmd *cobra.Command) (*cuda.Device, error) {
	name, _ := cmd.Flags().GetString("device")
	g, err := pipeline.OpenCUDA(name)
	if err != nil {
		return nil, err
	}
	mode, _ := cmd.Flags().GetString("gemm")
	switch mode {
	case "bf16":
		g.GEMM = cuda.GEMMBF16
	case "tf32":
		g.GEMM = cuda.GEMMTF32
	case "fp32":
		g.GEMM = cuda.GEMMExact
	default:
		return nil, fmt.Errorf("--gemm %q: want bf16, tf32 or fp32", mode)
	}
	return g, nil
}

// timeIt runs fn warm times, then iters times between events, and returns the median in ms.
func timeIt(g *cuda.Device, warm, iters int, fn func() error) (float64, error) {
	for i := 0; i < warm; i++ {
		if err := fn(); err != nil {
			return 0, err
		}
	}
	if err := g.Sync(); err != nil {
		return 0, err
	}
	a, err := g.NewEvent()
	if err != nil {
		return 0, err
	}
	b, err := g.NewEvent()
	if err != nil {
		return 0, err
	}
	ts := make([]float64, 0, iters)
	for i := 0; i < iters; i++ {
		a.Record()
		if err := fn(); err != nil {
			return 0, err
		}
		b.Record()
		ms, err := b.Since(a)
		if err != nil {
			return 0, err
		}
		ts = append(ts, float64(ms))
	}
	sort.Float64s(ts)
	return ts[len(ts)/2], g.Sync()
}

func randTensor(d kernels.Device, r *rand.Rand, lo, hi float32, shape ...int) *kernels.Tensor {
	t := d.Alloc(kernels.F32, shape...)
	v := make([]float32, t.Numel())
	for i := range v {
		if hi > lo {
			v[i] = lo + (hi-lo)*r.Float32()
		} else {
			v[i] = float32(r.NormFloat64())
		}
	}
	d.FromHost(t, v)
	return t
}

// addShapeFlags defines the architecture and input-shape flags of the bench commands (B = batch,
// F×H×W latent frames and size, L context tokens); shapeFlags reads them back.
func addShapeFlags(f *pflag.FlagSet) {
	f.String("preset", "wan2.1-1.3b", "architecture preset")
	f.Int("batch", 1, "batch size")
	f.Int("frames", 3, "latent frames")
	f.Int("height", 60, "latent height (480p: 60)")
	f.Int("width", 104, "latent width (480p: 104)")
	f.Int("ctx", 512, "context tokens")
	f.Bool("bf16-operands", true, "GEMM-only activations stored in bf16 where the GEMMs read bf16 (models.Shape.BF16Operands)")
}

// bf16Operands reads --bf16-operands.
func bf16Operands(fl *pflag.FlagSet) bool { v, _ := fl.GetBool("bf16-operands"); return v }

func shapeFlags(fl *pflag.FlagSet) (preset string, B, F, H, W, L int) {
	preset, _ = fl.GetString("preset")
	B, _ = fl.GetInt("batch")
	F, _ = fl.GetInt("frames")
	H, _ = fl.GetInt("height")
	W, _ = fl.GetInt("width")
	L, _ = fl.GetInt("ctx")
	return preset, B, F, H, W, L
}

func runBenchForward(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	preset, B, F, H, W, L := shapeFlags(fl)
	chunk, _ := fl.GetInt("chunk-frames")
	graph, _ := fl.GetBool("graph")
	train, _ := fl.GetBool("train")
	iters, _ := fl.GetInt("iters")
	warm, _ := fl.GetInt("warmup")
	cfg, err := models.Preset(preset)
	if err != nil {
		return err
	}
	s := models.Shape{B: B, F: F, H: H, W: W, L: L, ChunkFrames: chunk, BF16Operands: bf16Operands(fl)}
	if err := s.Check(cfg); err != nil {
		return err
	}
	g, err := benchDevice(cmd)
	if err != nil {
		return err
	}
	m := models.New(g, cfg, train)
	m.InitRandom(1, 0.02) // random, not zero: zeros time faster than real data
	g.MarkWeights(m.W)
	g.FrozenWeights = !train // inference: graph replays reuse the bf16 weight copies
	var p *models.Pass
	if train {
		p = m.NewPass(s)
	} else {
		p = m.NewInferencePass(s) // forward only: the blocks share one set of activations
	}
	r := rand.New(rand.NewSource(2))
	x := randTensor(g, r, 0, 0, B, cfg.InDim, F, H, W)
	t := randTensor(g, r, 700, 700.001, B, F)
	ctx := randTensor(g, r, 0, 0, B, L, cfg.TextDim)
	if err := g.Sync(); err != nil {
		return err
	}
	free, total, _ := g.MemInfo()
	gemm, _ := fl.GetString("gemm")
	res := map[string]any{"preset": preset, "frames": F, "tokens": F * (H / 2) * (W / 2) * B, "device": g.Info,
		"gemm": gemm, "graph": graph, "engine": "fewstep", "mem_used_GiB": float64(total-free) / (1 << 30)}
	fwd := func() error { m.Forward(p, x, t, ctx); return g.Err() }
	ms, err := timeIt(g, warm, iters, fwd)
	if err != nil {
		return err
	}
	res["fwd_ms"] = ms
	if graph {
		gr, err := g.Capture(func() { m.Forward(p, x, t, ctx) })
		if err != nil {
			return fmt.Errorf("capturing the forward: %w", err)
		}
		gms, err := timeIt(g, warm, iters, gr.Launch)
		if err != nil {
			return err
		}
		res["fwd_eager_ms"], res["fwd_ms"] = ms, gms
		gr.Destroy()
	}
	dOut := randTensor(g, r, 0, 0, B, cfg.OutDim, F, H, W)
	if prof, _ := fl.GetBool("profile"); prof {
		g.SetProfile(true)
		m.Forward(p, x, t, ctx)
		fmt.Fprintf(os.Stderr, "profile of one forward (%s, %d tokens):\n", preset, res["tokens"])
		if err := g.ProfileReport(os.Stderr, 1); err != nil {
			return err
		}
		if train {
			m.Forward(p, x, t, ctx)
			m.Backward(p, dOut) // a first backward outside the profile (its first calls load cuBLASLt's kernels)
			m.Forward(p, x, t, ctx)
			g.SetProfile(true)
			m.Backward(p, dOut)
			fmt.Fprintf(os.Stderr, "profile of one backward:\n")
			if err := g.ProfileReport(os.Stderr, 1); err != nil {
				return err
			}
		}
		g.SetProfile(false)
	}
	if train {
		step := func() error {
			m.Forward(p, x, t, ctx)
			m.Backward(p, dOut)
			return g.Err()
		}
		ms, err := timeIt(g, warm, iters, step)
		if err != nil {
			return err
		}
		res["fwd_bwd_ms"] = ms
	}
	return benchReport(cmd, res)
}

// benchDType reads a benchmark's --dtype: bf16 or fp32.
func benchDType(s string) (kernels.DType, error) {
	switch s {
	case "bf16":
		return kernels.BF16, nil
	case "fp32":
		return kernels.F32, nil
	}
	return 0, fmt.Errorf("--dtype %q: want bf16 or fp32", s)
}

func runBenchAttention(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	B, _ := fl.GetInt("batch")
	N, _ := fl.GetInt("tokens")
	H, _ := fl.GetInt("heads")
	hd, _ := fl.GetInt("head-dim")
	ds, _ := fl.GetString("dtype")
	ct, _ := fl.GetInt("chunk-tokens")
	back, _ := fl.GetBool("backward")
	iters, _ := fl.GetInt("iters")
	warm, _ := fl.GetInt("warmup")
	dt, err := benchDType(ds)
	if err != nil {
		return err
	}
	g, err := benchDevice(cmd)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewSource(3))
	mk := func(shape ...int) *kernels.Tensor {
		f := randTensor(g, r, 0, 0, shape...)
		o := g.Alloc(dt, shape...)
		g.Copy(o, f)
		g.Free(f)
		return o
	}
	q, k, v, o, dO := mk(B, N, H, hd), mk(B, N, H, hd), mk(B, N, H, hd), mk(B, N, H, hd), mk(B, N, H, hd)
	dq, dk, dv := g.Alloc(dt, B, N, H, hd), g.Alloc(dt, B, N, H, hd), g.Alloc(dt, B, N, H, hd)
	lse := g.Alloc(kernels.F32, B, H, N)
	// Visible pairs: all, or for block-causal Σ over chunks.
	pairs := float64(N) * float64(N)
	if ct > 0 {
		pairs = 0
		for i := 0; i < N; i++ {
			pairs += float64(min(N, (i/ct+1)*ct))
		}
	}
	flops := 4 * float64(B*H*hd) * pairs // QKᵀ and PV
	ms, err := timeIt(g, warm, iters, func() error { g.Attention(o, lse, q, k, v, ct, 0); return g.Err() })
	if err != nil {
		return err
	}
	res := map[string]any{"op": "attention", "tokens": N, "heads": H, "head_dim": hd, "dtype": ds, "chunk_tokens": ct,
		"device": g.Info, "fwd_ms": ms, "fwd_TFLOPs": flops / ms / 1e9}
	if back {
		bms, err := timeIt(g, warm, iters, func() error {
			g.AttentionBack(dq, dk, dv, dO, o, lse, q, k, v, ct, 0)
			return g.Err()
		})
		if err != nil {
			return err
		}
		res["bwd_ms"], res["bwd_TFLOPs"] = bms, 2.5*flops/bms/1e9
	}
	return benchReport(cmd, res)
}
