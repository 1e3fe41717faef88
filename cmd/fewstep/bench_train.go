package main

// fewstep bench train: one training step on the GPU, timed, with the PyTorch peer's step beside it.
//
//   --objective step: the plain step wan_ref.py --train times: forward, loss = mean(v²), backward,
//     one fused AdamW over the whole fp32 parameter buffer (bf16 GEMMs, fp32 master weights).
//   --objective dmd | selfforcing | flowmatch | ...: one trainer step (trainer.TrainStep) of that
//     objective with every role it declares (teacher from random weights), the EMA of the student,
//     global-norm clipping and AdamW per trainable role; generator updated every step.
// Model FLOP utilisation counts 3× the forward's matmul and attention FLOPs per trained forward.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/trainer"
)

var benchTrainCmd = &cobra.Command{
	Use:   "train",
	Short: "Time one training step (plain fwd+bwd+AdamW, or an objective's trainer step) beside PyTorch",
	Long: `Times one training step of a preset on the GPU at a given latent shape (random weights).
--objective step is the plain step of wan_ref.py --train (forward, loss mean(v²), backward, fused
AdamW); any registered objective (dmd, selfforcing, ...) runs one trainer step with all its roles,
the student's EMA and clipping. Reports the median step time, the model FLOP utilisation and the
device memory used; --mem-limit-gib emulates a smaller card (the rest of the memory is taken first).
An objective's step is first counted on the CPU (models.DryDevice: the bytes it holds on the card,
by item, in the JSON's "dry"); --dry stops there, without a GPU.
--devices LIST runs the objective's step data parallel on those GPUs (one goroutine and stream
each, NCCL between them; --batch per GPU, --shard none|optimizer|full) and reports the wall time of
a step of all ranks, samples/s and, for several GPUs, the one-GPU step (timed first in a child
process), the scaling efficiency and the speedup; metrics_by_step holds every step's losses.
With --peer wan_ref.py and python3 on the PATH, the peer's train step runs first, in its own
process, and the ratio is reported.`,
	Example: `  fewstep bench train --preset wan2.1-1.3b --frames 3 --height 60 --width 104 --peer gpubuild/wan_ref.py --peer-compile
  fewstep bench train --objective dmd --recompute --mem-limit-gib 79.6
  fewstep bench train --objective dmd --recompute --devices all --shard optimizer`,
	RunE: runBenchTrain,
}

func init() {
	f := benchTrainCmd.Flags()
	f.String("objective", "step", "step (plain fwd+bwd+AdamW) or an objective name (dmd, selfforcing, flowmatch, ...)")
	addShapeFlags(f)
	f.Int("chunk-frames", 3, "frames per chunk of a causal student (selfforcing)")
	f.Bool("recompute", false, "recompute each block's activations in backward (models.Shape.Recompute)")
	f.Bool("dry", false, "only the dry accounting of an objective's step (no GPU): bytes it holds on the card, by item")
	f.Int("world", 1, "with --dry: count one rank of a job on this many ranks (--batch is per rank)")
	f.String("shard", "none", "train.shard of the job (counted with --dry, run with --devices): none, optimizer or full")
	f.String("devices", "", "run an objective's step data-parallel on these GPUs (all | cuda:0,1,2,3 | N), one goroutine each, through NCCL; several GPUs also time one GPU first, for the scaling")
	f.Bool("scaling", true, "with --devices of several GPUs: time the one-GPU step first (a child process)")
	f.Float64("mem-limit-gib", 0, "emulate a card with this much memory: allocate the rest first (0: off)")
	f.Float64("peak-tflops", 989.4, "the card's dense bf16 peak for MFU (H100/H200 SXM: 989.4)")
	f.String("peer", "", "path of wan_ref.py: run its --train step first (needs python3 with torch)")
	f.Bool("peer-compile", false, "also run the peer with --compile")
	f.String("device", "cuda", "cuda or cuda:N")
	f.String("gemm", "bf16", "fp32 GEMMs: bf16 (tensor cores, bf16 operands), tf32, or fp32 (exact)")
	f.String("noise", "auto", "an objective's step: train.noise (auto: on the device on a GPU; host: drawn on the host and uploaded, as the CPU does)")
	f.Int("iters", 5, "timed steps (the median is reported)")
	f.Int("warmup", 2, "untimed steps first")
	benchCmd.AddCommand(benchTrainCmd)
}

// forwardFLOPs is one forward's matmul and attention FLOPs (2 per multiply-add) of cfg on B videos
// of N tokens with L context tokens; attention over `visible` key tokens per query on average.
func forwardFLOPs(cfg models.Config, B, N, L int, visible float64) float64 {
	D, Fd, n, l := float64(cfg.Dim), float64(cfg.FFNDim), float64(N), float64(L)
	block := 8*n*D*D + // self q, k, v, o
		4*n*D*D + 4*l*D*D + // cross q, o; cross k, v on the context
		4*n*D*Fd + // FFN
		4*n*visible*D + // self-attention QKᵀ and PV
		4*n*l*D // cross-attention
	emb := 2*n*float64(4*cfg.InDim)*D + 2*n*D*float64(4*cfg.OutDim) + 2*l*(float64(cfg.TextDim)*D+D*D)
	return float64(B) * (float64(cfg.Layers)*block + emb)
}

// runPeer runs wan_ref.py --train (and --compile) and returns its JSON result.
func runPeer(path string, compile bool, preset string, F, H, W, L int) (map[string]any, error) {
	py, err := exec.LookPath("python3")
	if err != nil {
		return nil, fmt.Errorf("no python3 on the PATH")
	}
	pp := map[string]string{"wan2.1-1.3b": "wan1.3b", "wan2.1-14b": "wan14b"}[preset]
	if pp == "" {
		pp = preset
	}
	args := []string{path, "--preset", pp, "--frames", strconv.Itoa(F), "--height", strconv.Itoa(H), "--width", strconv.Itoa(W),
		"--ctx", strconv.Itoa(L), "--train"}
	if compile {
		args = append(args, "--compile")
	}
	cmd := exec.Command(py, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		tail := errb.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return nil, fmt.Errorf("%s %s: %w\n%s", py, strings.Join(args, " "), err, tail)
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "{") {
			var r map[string]any
			if err := json.Unmarshal([]byte(line), &r); err == nil {
				r["wall_s"] = time.Since(t0).Seconds()
				return r, nil
			}
		}
	}
	return nil, fmt.Errorf("%s: no JSON line in its output", path)
}

// benchSource is a fixed random batch, returned by every Next.
type benchSource struct{ hb *trainer.HostBatch }

func (s benchSource) Next() (*trainer.HostBatch, error) { return s.hb, nil }
func (s benchSource) Cursor() ([]byte, error)           { return []byte("0"), nil }
func (s benchSource) Restore([]byte) error              { return nil }

func runBenchTrain(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	obj, _ := fl.GetString("objective")
	preset, B, F, H, W, L := shapeFlags(fl)
	chunk, _ := fl.GetInt("chunk-frames")
	recompute, _ := fl.GetBool("recompute")
	limit, _ := fl.GetFloat64("mem-limit-gib")
	peak, _ := fl.GetFloat64("peak-tflops")
	peer, _ := fl.GetString("peer")
	peerCompile, _ := fl.GetBool("peer-compile")
	iters, _ := fl.GetInt("iters")
	warm, _ := fl.GetInt("warmup")
	cfg, err := models.Preset(preset)
	if err != nil {
		return err
	}
	s := models.Shape{B: B, F: F, H: H, W: W, L: L, Recompute: recompute, BF16Operands: bf16Operands(fl)}
	if err := s.Check(cfg); err != nil {
		return err
	}
	if iters < 1 {
		return fmt.Errorf("--iters %d: want at least 1", iters)
	}
	if dry, _ := fl.GetBool("dry"); dry && obj == "step" {
		return fmt.Errorf("--dry counts an objective's trainer step: give --objective (dmd, selfforcing, ...)")
	}
	N := F * (H / 2) * (W / 2)
	res := map[string]any{"bench": "train", "objective": obj, "preset": preset, "batch": B, "frames": F, "tokens": N * B,
		"ctx": L, "recompute": recompute, "engine": "fewstep"}

	// Dry accounting (bench_dry.go): what the step holds on the card, counted on the CPU first, so a
	// run that runs out of memory still says what it needed.
	if obj != "step" {
		ds := s
		if obj == "selfforcing" {
			ds.ChunkFrames = chunk
		}
		gm, _ := fl.GetString("gemm")
		world, _ := fl.GetInt("world")
		shard, _ := fl.GetString("shard")
		dr, err := dryTrain(obj, cfg, ds, L, 2, gm == "bf16", world, shard)
		if err != nil {
			return fmt.Errorf("dry accounting: %w", err)
		}
		res["dry"] = dr
		if dry, _ := fl.GetBool("dry"); dry {
			return benchReport(cmd, res)
		}
	}

	if devs, _ := fl.GetString("devices"); devs != "" {
		if obj == "step" {
			return fmt.Errorf("--devices runs an objective's trainer step: give --objective (dmd, selfforcing, ...)")
		}
		if obj == "selfforcing" {
			s.ChunkFrames = chunk
		}
		return benchTrainRanks(cmd, res, obj, cfg, s, L)
	}

	// The peer first, in its own process, before this one holds any GPU memory.
	if peer != "" && obj == "step" {
		for _, c := range []bool{false, true} {
			if c && !peerCompile {
				continue
			}
			key := map[bool]string{false: "peer_eager", true: "peer_compiled"}[c]
			r, err := runPeer(peer, c, preset, F, H, W, L)
			if err != nil {
				res[key+"_error"] = err.Error()
				fmt.Fprintf(os.Stderr, "bench train: peer: %v\n", err)
				continue
			}
			res[key] = r
		}
	}

	g, err := benchDevice(cmd)
	if err != nil {
		return err
	}
	res["device"] = g.Info
	free0, total, err := g.MemInfo()
	if err != nil {
		return err
	}
	var ballast *kernels.Tensor
	if limit > 0 {
		want := uint64(limit * (1 << 30))
		if want < total {
			n := int((total - want) / 4)
			ballast = g.Alloc(kernels.F32, n)
			if err := g.Sync(); err != nil {
				return fmt.Errorf("--mem-limit-gib %g: allocating %d bytes of ballast: %w", limit, 4*n, err)
			}
			res["mem_limit_GiB"] = limit
		}
	}
	_ = ballast
	used := func() float64 { // GiB this process holds beyond the ballast, context included
		f, _, _ := g.MemInfo()
		u := float64(total-f) / (1 << 30)
		if ballast != nil {
			u -= float64(ballast.Numel()*4) / (1 << 30)
		}
		return u
	}
	res["mem_before_GiB"] = float64(total-free0) / (1 << 30)

	var step func() error
	var trainedFwd float64 // FLOPs of the forwards that the step differentiates (×3) — model FLOPs
	metrics := func() map[string]float64 { return nil }
	if obj == "step" {
		m := models.New(g, cfg, true)
		trainer.RandomWeights(g, m.W, 1, 0.02)
		g.MarkWeights(m.W)
		mo, vo := g.Alloc(kernels.F32, m.W.Numel()), g.Alloc(kernels.F32, m.W.Numel())
		p := m.NewPass(s)
		r := rand.New(rand.NewSource(2))
		x := randTensor(g, r, 0, 0, B, cfg.InDim, F, H, W)
		t := randTensor(g, r, 700, 700.001, B, F)
		ctx := randTensor(g, r, 0, 0, B, L, cfg.TextDim)
		dOut := g.Alloc(kernels.F32, B, cfg.OutDim, F, H, W)
		n := float32(dOut.Numel())
		k := 0
		step = func() error {
			k++
			g.Zero(m.G)
			v := m.Forward(p, x, t, ctx)                          // [B,C,F,H,W]
			g.Combine(dOut, v, v, []float32{2 / n}, []float32{0}) // d mean(v²)/dv
			m.Backward(p, dOut)
			g.AdamW(m.W, m.G, mo, vo, 1e-5, 0.9, 0.999, 1e-8, 0.01, k) // torch.optim.AdamW(fused) defaults
			return g.Err()
		}
		trainedFwd = forwardFLOPs(cfg, B, N, L, float64(N))
		fwd := func() error { m.Forward(p, x, t, ctx); return g.Err() }
		ms, err := timeIt(g, warm, iters, fwd)
		if err != nil {
			return err
		}
		res["fwd_ms"] = ms
		res["pass_GiB"] = float64(p.Bytes()) / (1 << 30)
	} else {
		gm, _ := fl.GetString("gemm")
		job := benchJob(obj, gm == "bf16")
		job.Train.Shard, _ = fl.GetString("shard") // one rank: no communicator, nothing to shard
		job.Train.Noise, _ = fl.GetString("noise")
		res["noise"] = job.Train.Noise
		if obj == "selfforcing" {
			s.ChunkFrames = chunk
		}
		ht, hx := benchBatch(B*L*cfg.TextDim, B*cfg.InDim*F*H*W)
		trainer.UseGPUDefaults(g)
		tr, err := trainer.New(trainer.Options{Job: &job, Dev: g, Model: cfg, Shape: s,
			Null: make([]float32, L*cfg.TextDim), RandomInit: true,
			Source: benchSource{&trainer.HostBatch{X0: hx, Ctx: ht, Drop: make([]bool, B)}}})
		if err == nil {
			err = g.Sync()
		}
		if err != nil { // e.g. out of memory: the JSON line still says what the step needs (res["dry"])
			res["error"] = "building the roles: " + err.Error()
			res["mem_used_GiB"] = used()
			benchReport(cmd, res)
			return fmt.Errorf("building the roles: %w", err)
		}
		res["roles"] = tr.RoleNames()
		res["mem_setup_GiB"] = used()
		var last map[string]float64
		step = func() error {
			m, err := tr.TrainStep()
			last = m
			if err != nil {
				return err
			}
			return g.Err()
		}
		metrics = func() map[string]float64 { return last }
	}
	ms, err := timeIt(g, warm, iters, step)
	if err != nil {
		res["error"] = err.Error()
		res["mem_used_GiB"] = used()
		benchReport(cmd, res)
		return err
	}
	res["step_ms"] = ms
	res["mem_used_GiB"] = used()
	if trainedFwd > 0 {
		tf := 3 * trainedFwd / (ms / 1e3) / 1e12
		res["model_TFLOPs"] = tf
		res["MFU"] = tf / peak
		res["fwd_TFLOP"] = trainedFwd / 1e12
	}
	for _, k := range []string{"peer_eager", "peer_compiled"} {
		if pr, ok := res[k].(map[string]any); ok {
			if pms, ok := pr["train_step_ms"].(float64); ok {
				res[k+"_step_ms"] = pms
				res[k+"_over_ours"] = pms / ms
			}
		}
	}
	if obj != "step" {
		// the step's per-iteration times vary with the rollout's random exit step: report them all
		var ts []float64
		for i := 0; i < iters; i++ {
			t0 := time.Now()
			if err := step(); err != nil {
				return err
			}
			if err := g.Sync(); err != nil {
				return err
			}
			ts = append(ts, float64(time.Since(t0).Microseconds())/1e3)
		}
		sort.Float64s(ts)
		res["step_wall_ms_sorted"] = ts
		res["mem_used_GiB"] = used()
		res["last_metrics"] = metrics()
	}
	return benchReport(cmd, res)
}

// benchBatch is the benchmarks' fixed micro-batch on the host (seed 3): text embeddings [nText] and
// latents [nLatent], standard normal, the same for every rank and every run.
func benchBatch(nText, nLatent int) (ht, hx []float32) {
	ht, hx = make([]float32, nText), make([]float32, nLatent)
	r := rand.New(rand.NewSource(3))
	for i := range ht {
		ht[i] = float32(r.NormFloat64())
	}
	for i := range hx {
		hx[i] = float32(r.NormFloat64())
	}
	return ht, hx
}
