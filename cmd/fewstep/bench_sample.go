package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/trainer"
	"github.com/spf13/cobra"
)

// `fewstep bench sample` and `bench stream`: the library's own path (pipeline.Generate and
// pipeline.Stream, forward-only passes, bf16 GEMMs on bf16 weight copies) on random weights, timed
// end to end: host noise, every forward, the latents back on the host.

var benchSampleCmd = &cobra.Command{
	Use:   "sample",
	Short: "Time pipeline.Generate (few-step sampling of whole videos) on random weights; --dry counts its memory",
	Long: `Builds a student of the preset on random weights with a recipe of --steps levels (sampler
fewstep, shift 5) and times pipeline.Generate of --batch videos of [16, frames, height, width]
latents (the wall time per video, median of --iters, and the device memory after). With --dry, no
GPU: the bytes the same call holds on the card (models.DryDevice, GEMMs in bf16 mode), beside those
of a training pass of the same shape (what sampling held before it ran forward-only passes).`,
	Example: `  fewstep bench sample --preset wan2.1-1.3b --frames 21 --height 60 --width 104 --steps 4 --dry
  fewstep bench sample --preset wan2.1-1.3b --frames 21 --height 60 --width 104 --steps 4`,
	RunE: runBenchSample,
}

func init() {
	f := benchSampleCmd.Flags()
	addShapeFlags(f)
	f.Int("steps", 4, "denoising steps (the recipe's list: 1000, 750, ... shifted by 5)")
	f.Bool("dry", false, "count the bytes on the card instead (no GPU)")
	f.Bool("graph", false, "replay the forwards from CUDA graphs (pipeline.UseGraphs); also reports the largest difference from an eager run")
	f.String("device", "cuda", "cuda or cuda:N")
	f.Int("iters", 3, "timed repetitions (the median is reported)")
	f.Int("warmup", 1, "untimed repetitions first")
	benchCmd.AddCommand(benchSampleCmd)
}

// randomStudent is a student of the preset on random weights with a recipe of steps levels
// (fewstep, or stream for chunk > 0) for latents [16, F, H, W] and L context tokens.
func randomStudent(dev kernels.Device, preset string, F, H, W, L, steps, chunk, local, sink int) (*pipeline.Pipeline, error) {
	cfg, err := models.Preset(preset)
	if err != nil {
		return nil, err
	}
	cfg.TextLen = L
	rec := &pipeline.Recipe{Format: pipeline.RecipeFormat, Objective: "bench", Sampler: "fewstep", Shift: 5, CFG: 1,
		LatentChannels: cfg.InDim, Frames: F, Height: H, Width: W, TextLen: L, TextDim: cfg.TextDim, LatentSpace: "vae"}
	for i := 0; i < steps; i++ {
		rec.Timesteps = append(rec.Timesteps, 1000*(1-float64(i)/float64(steps)))
	}
	if chunk > 0 {
		rec.Sampler, rec.Causal, rec.ChunkFrames, rec.LocalFrames, rec.SinkFrames = "stream", true, chunk, local, sink
	}
	if err := rec.Validate(); err != nil {
		return nil, err
	}
	m := models.New(dev, cfg, false)
	trainer.RandomWeights(dev, m.W, 1, 0.02) // random, not zero: zeros time faster than real data
	if d, ok := dev.(*models.DryDevice); ok {
		d.MarkWeights(m.W) // as pipeline.New marks them on a GPU
	}
	return pipeline.New(m, rec)
}

// randomRequest is B prompts of L random tokens.
func randomRequest(B, L, D int) pipeline.Request {
	r := rand.New(rand.NewPCG(2, 3))
	req := pipeline.Request{}
	for i := 0; i < B; i++ {
		e := make([]float32, L*D)
		for j := range e {
			e[j] = float32(r.NormFloat64())
		}
		req.Prompts, req.Seeds = append(req.Prompts, e), append(req.Seeds, int64(i))
	}
	return req
}

func runBenchSample(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	preset, B, F, H, W, L := shapeFlags(fl)
	steps, _ := fl.GetInt("steps")
	const gib = 1 << 30
	res := map[string]any{"bench": "sample", "engine": "fewstep", "preset": preset, "batch": B, "frames": F, "height": H, "width": W,
		"tokens": F * (H / 2) * (W / 2), "steps": steps, "video_frames": 1 + 4*(F-1)}
	if dry, _ := fl.GetBool("dry"); dry {
		d := models.NewDryDevice()
		p, err := randomStudent(d, preset, F, H, W, L, steps, 0, 0, 0)
		if err != nil {
			return err
		}
		if _, err := p.Generate(context.Background(), randomRequest(B, L, p.Config.TextDim)); err != nil {
			return err
		}
		items := map[string]float64{}
		for _, it := range d.Labels(false) {
			items[it.Label] = float64(it.Bytes) / gib
		}
		res["device"], res["peak_GiB"], res["at_peak_GiB"] = "dry", float64(d.Peak())/gib, items
		// the same shape's training pass (activations kept for backward, backward scratch)
		t := models.NewDryDevice()
		m := models.New(t, p.Config, false)
		t.MarkWeights(m.W)
		m.NewPass(models.Shape{B: B, F: F, H: H, W: W, L: L})
		res["training_pass_GiB"] = float64(t.Peak()) / gib
		res["note"] = "counted by models.DryDevice: allocations, bf16 weight/activation copies, op scratch; not the CUDA context (~0.5 GiB) nor allocator slack. training_pass_GiB: weights + a NewPass of the same shape (what sampling held before forward-only passes), before any op runs"
		return benchReport(cmd, res)
	}
	name, _ := fl.GetString("device")
	g, err := pipeline.OpenCUDA(name)
	if err != nil {
		return err
	}
	p, err := randomStudent(g, preset, F, H, W, L, steps, 0, 0, 0)
	if err != nil {
		return err
	}
	req := randomRequest(B, L, p.Config.TextDim)
	if graph, _ := fl.GetBool("graph"); graph {
		eager, err := p.Generate(context.Background(), req)
		if err != nil {
			return err
		}
		p.UseGraphs()
		res["graph"] = true
		g1, err := p.Generate(context.Background(), req) // captures
		if err != nil {
			return err
		}
		g2, err := p.Generate(context.Background(), req) // replays
		if err != nil {
			return err
		}
		worst := 0.0
		for i := range eager.Latents {
			worst = max(worst, math.Abs(float64(eager.Latents[i]-g1.Latents[i])), math.Abs(float64(eager.Latents[i]-g2.Latents[i])))
		}
		res["graph_vs_eager_max_abs"] = worst
	}
	warm, _ := fl.GetInt("warmup")
	iters, _ := fl.GetInt("iters")
	var ms []float64
	for i := 0; i < warm+max(iters, 1); i++ {
		t0 := time.Now()
		out, err := p.Generate(context.Background(), req)
		if err != nil {
			return err
		}
		if i >= warm {
			ms = append(ms, float64(time.Since(t0).Microseconds())/1e3/float64(B))
			res["nfe"] = out.NFE
		}
	}
	free, total, _ := g.MemInfo()
	res["device"], res["ms_per_video"], res["mem_used_GiB"] = g.Info, median(ms), float64(total-free)/gib
	res["note"] = "pipeline.Generate end to end (host noise, forwards, latents to the host); mem_used_GiB: the card's used memory after (cuMemGetInfo: our allocations, the CUDA context and other processes)"
	return benchReport(cmd, res)
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// runBenchStream times pipeline.Stream of a causal student on random weights.
func runBenchStream(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	preset, _ := fl.GetString("preset")
	H, _ := fl.GetInt("height")
	W, _ := fl.GetInt("width")
	L, _ := fl.GetInt("ctx")
	k, _ := fl.GetInt("chunk-frames")
	chunks, _ := fl.GetInt("chunks")
	steps, _ := fl.GetInt("steps")
	local, _ := fl.GetInt("local-frames")
	sink, _ := fl.GetInt("sink-frames")
	warm, _ := fl.GetInt("warmup")
	if k <= 0 || chunks <= 0 || steps <= 0 {
		return fmt.Errorf("bench stream: --chunk-frames, --chunks and --steps must be positive")
	}
	g, err := benchDevice(cmd)
	if err != nil {
		return err
	}
	frames := chunks * k
	p, err := randomStudent(g, preset, frames, H, W, L, steps, k, local, sink)
	if err != nil {
		return err
	}
	req := randomRequest(1, L, p.Config.TextDim)
	var total, first time.Duration
	var chunkMs []float64
	for i := 0; i < max(warm, 1)+1; i++ {
		chunkMs = chunkMs[:0]
		t0, last := time.Now(), time.Now()
		_, f, err := p.Stream(context.Background(), req, func(pipeline.Chunk) error {
			chunkMs = append(chunkMs, float64(time.Since(last).Microseconds())/1e3)
			last = time.Now()
			return nil
		})
		if err != nil {
			return err
		}
		total, first = time.Since(t0), f
	}
	tot := float64(total.Microseconds()) / 1e3
	res := map[string]any{"bench": "stream", "engine": "fewstep pipeline.Stream", "preset": preset, "device": g.Info, "latent_frames": frames,
		"video_frames": 1 + 4*(frames-1), "chunk_frames": k, "steps": steps, "tokens_per_chunk": k * (H / 2) * (W / 2),
		"total_ms": tot, "first_chunk_ms": float64(first.Microseconds()) / 1e3, "chunk_ms": chunkMs,
		"latent_fps": float64(frames) / tot * 1000, "video_fps": float64(1+4*(frames-1)) / tot * 1000, "local_frames": local, "sink_frames": sink,
		"note": "the library's stream end to end (host noise, steps forwards + 1 cache forward per chunk, each chunk's latents to the host); DiT only (no text encoder, no VAE decode)"}
	return benchReport(cmd, res)
}
