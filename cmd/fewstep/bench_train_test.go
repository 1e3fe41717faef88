package main

import (
	"math"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// flopCounter is the CPU device counting the FLOPs of the matmuls and attentions it runs.
type flopCounter struct {
	kernels.Device
	flops float64
}

func (c *flopCounter) Linear(out, in, w, b *kernels.Tensor) {
	M, N, K := in.Numel()/w.Shape[1], w.Shape[0], w.Shape[1]
	c.flops += 2 * float64(M) * float64(N) * float64(K)
	c.Device.Linear(out, in, w, b)
}

func (c *flopCounter) Attention(out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) {
	B, Nq, H, hd, Nk := q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3], k.Shape[1]
	c.flops += 4 * float64(B*H*hd) * float64(Nq) * float64(Nk) // QKᵀ and PV, every key visible
	c.Device.Attention(out, lse, q, k, v, chunkTokens, qOffset)
}

// TestForwardFLOPs: the MFU numerator of `bench train` (forwardFLOPs) equals the FLOPs the model's
// forward actually asks of the device's Linear and Attention ops, counted on the CPU (bidirectional:
// every key visible), for two shapes, once the per-frame time MLP is added (forwardFLOPs leaves it out:
// B·F rows, 3 of 4,680 at Wan-1.3B 480p).
func TestForwardFLOPs(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg.InDim, cfg.OutDim = 8, 8
	for _, s := range []models.Shape{{B: 1, F: 3, H: 8, W: 12, L: 7}, {B: 2, F: 2, H: 6, W: 4, L: 5}} {
		dev := &flopCounter{Device: kernels.CPU()}
		m := models.New(dev, cfg, false)
		p := m.NewPass(s)
		x := dev.Alloc(kernels.F32, s.B, cfg.InDim, s.F, s.H, s.W)
		tt := dev.Alloc(kernels.F32, s.B, s.F)
		ctx := dev.Alloc(kernels.F32, s.B, s.L, cfg.TextDim)
		m.Forward(p, x, tt, ctx)
		N := s.F * (s.H / 2) * (s.W / 2)
		want := forwardFLOPs(cfg, s.B, N, s.L, float64(N))
		// the per-frame time embedding MLP (freq → D → D → 6D), which forwardFLOPs leaves out
		timeMLP := 2 * float64(s.B*s.F) * float64(cfg.FreqDim*cfg.Dim+cfg.Dim*cfg.Dim+cfg.Dim*6*cfg.Dim)
		if e := math.Abs(dev.flops-timeMLP-want) / want; e > 1e-12 {
			t.Errorf("shape %+v: counted %.6g FLOPs (%.6g without the time MLP), forwardFLOPs says %.6g", s, dev.flops, dev.flops-timeMLP, want)
		}
		t.Logf("shape %+v: %.4g FLOPs counted, time MLP %.2g%%", s, dev.flops, 100*timeMLP/dev.flops)
	}
}

// TestBenchTrainDry: bench train's dry accounting (bench_dry.go) runs an objective's trainer steps on
// models.DryDevice: the bytes at setup and at the peak are positive, the peak holds at least the
// setup, and the items at the peak add up to the peak (every byte has one label). --dry without an
// objective (the plain step has no trainer step to count) is an error, not a GPU run.
func TestBenchTrainDry(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range []string{"dmd", "selfforcing"} {
		s := models.Shape{B: 1, F: 4, H: 4, W: 4, L: 3, Recompute: true}
		if obj == "selfforcing" {
			s.ChunkFrames = 2
		}
		r, err := dryTrain(obj, cfg, s, s.L, 2, true, 1, "none")
		if err != nil {
			t.Fatalf("%s: %v", obj, err)
		}
		setup, peak := r["setup_GiB"].(float64), r["peak_GiB"].(float64)
		var sum float64
		for _, v := range r["at_peak_GiB"].(map[string]float64) {
			sum += v
		}
		if setup <= 0 || peak < setup || math.Abs(sum-peak) > 1e-9*peak {
			t.Errorf("%s: setup %.6g GiB, peak %.6g GiB, items at the peak add up to %.6g GiB", obj, setup, peak, sum)
		}
		t.Logf("%s: setup %.4g MiB, peak %.4g MiB, %d items", obj, setup*1024, peak*1024, len(r["at_peak_GiB"].(map[string]float64)))
	}

	resetFlags(rootCmd)
	rootCmd.SetArgs([]string{"bench", "train", "--dry", "--preset", "tiny"})
	rootCmd.SetOut(&strings.Builder{})
	rootCmd.SetErr(&strings.Builder{})
	if err := rootCmd.Execute(); err == nil || !strings.Contains(err.Error(), "--objective") {
		t.Errorf("bench train --dry without --objective: error %v, want one naming --objective", err)
	}
}

// TestBenchTrainDryWorld: the dry count of one rank of an N-rank job with train.shard optimizer
// holds the AdamW moments and the fp32 master weights of 1/N of each trainable role (the trainer's
// own allocations), the trainable networks' weights in bf16 (2 bytes a parameter less each, and
// no bf16 copies of them for the GEMMs) and everything else as one rank does; with shard none it
// holds what one rank holds.
func TestBenchTrainDryWorld(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	s := models.Shape{B: 1, F: 4, H: 4, W: 4, L: 3, Recompute: true}
	moments := func(r map[string]any) float64 {
		return r["at_peak_GiB"].(map[string]float64)["trainer.(*Trainer).build"]
	}
	one, err := dryTrain("dmd", cfg, s, s.L, 2, true, 1, "none")
	if err != nil {
		t.Fatal(err)
	}
	// the student's and critic's v: 2 buffers of P fp32 (bench's roles have β1 = 0: no m,
	// trainer/optim.go firstMoment)
	_, P := cfg.Params()
	if want := float64(2*4*P) / (1 << 30); math.Abs(moments(one)-want) > 1e-12 {
		t.Fatalf("one rank: moments %.6g GiB, want 2·4·P = %.6g GiB", moments(one), want)
	}
	for _, c := range []struct {
		world int
		shard string
	}{{2, "none"}, {2, "optimizer"}, {4, "optimizer"}, {3, "optimizer"}} {
		r, err := dryTrain("dmd", cfg, s, s.L, 2, true, c.world, c.shard)
		if err != nil {
			t.Fatalf("world %d, %s: %v", c.world, c.shard, err)
		}
		want := moments(one)
		if c.shard == "optimizer" {
			k := P / c.world
			want = float64(2*2*4*(k+P-c.world*k)) / (1 << 30) // v and the master of the slice and the < N tail
		}
		if got := moments(r); math.Abs(got-want) > 1e-12 {
			t.Errorf("world %d, %s: moments %.6g GiB, want %.6g", c.world, c.shard, got, want)
		}
		// the rest is one rank's, plus the metrics' all-reduce scratch (64 fp32); under optimizer
		// less the two trainable networks' weights in bf16 (2·2·P bytes) and their bf16 GEMM copies
		// (at most 2·2·P)
		rest := r["peak_GiB"].(float64) - moments(r)
		restOne := one["peak_GiB"].(float64) - moments(one) + 256.0/(1<<30)
		lo, hi := restOne, restOne
		if c.shard == "optimizer" {
			lo, hi = restOne-float64(2*4*P)/(1<<30), restOne-float64(2*2*P)/(1<<30)
		}
		if rest < lo-1e-12 || rest > hi+1e-12 {
			t.Errorf("world %d, %s: peak less moments %.9g GiB, want in [%.9g, %.9g] (one rank's + 256 bytes %.9g)", c.world, c.shard, rest, lo, hi, restOne)
		}
	}
	// full: every DiT role holds the embeddings, the head and 1/N of each block (+ two blocks'
	// slots); on the small preset (8 blocks) the blocks are most of the parameters
	small, err := models.Preset("small")
	if err != nil {
		t.Fatal(err)
	}
	opt, err := dryTrain("dmd", small, s, s.L, 2, true, 4, "optimizer")
	if err != nil {
		t.Fatal(err)
	}
	full, err := dryTrain("dmd", small, s, s.L, 2, true, 4, "full")
	if err != nil {
		t.Fatal(err)
	}
	nets := func(r map[string]any) float64 { // the networks the trainer builds (models.New, NewFrozen, NewSharded)
		var b float64
		for k, v := range r["at_peak_GiB"].(map[string]float64) {
			if strings.HasPrefix(k, "trainer.(*Trainer).build → models.") {
				b += v
			}
		}
		return b
	}
	whole, sharded := nets(opt), nets(full)
	// expected: each role's local buffer (embeddings, 1/4 of each block, head), its two slots of
	// one block each (N·s: block l and the prefetched l±1) with their send buffers (s) and, with a
	// gradient, the two gradient slots and their reduce-scatter scratches (s); W and G for the
	// student and critic, W for the teacher and EMA. Whole (optimizer): bf16 W and fp32 G of the student and critic (their fp32
	// masters are the trainer's slices), fp32 W of the EMA, the teacher in bf16 (a bf16-GEMM
	// device).
	table, P := small.Params()
	var b0, head int
	for _, p := range table {
		switch p.Name {
		case "blocks.0.self_attn.q.weight":
			b0 = p.Offset
		case "head.head.weight":
			head = p.Offset
		}
	}
	S := (head - b0) / small.Layers
	sl := (S + 3) / 4
	local := b0 + small.Layers*sl + P - head
	// bytes: fp32 local W (and G), the two weight slots and their send buffers in bf16 (a bf16-GEMM
	// device gathers bf16), the two gradient slots and scratches in fp32
	trainable := 4*local + 2*2*4*sl + 2*2*sl + 4*local + 2*4*4*sl + 2*4*sl
	frozen := 4*local + 2*2*4*sl + 2*2*sl
	want := float64(2*trainable+2*frozen) / (1 << 30)
	wantWhole := float64(2*(2*P+4*P)+4*P+2*P) / (1 << 30)
	if math.Abs(sharded-want) > 1e-12 || math.Abs(whole-wantWhole) > 1e-12 {
		t.Errorf("shard full on 4 ranks: the roles' weights and gradients take %.6g GiB, want %.6g (whole: %.6g, want %.6g)", sharded, want, whole, wantWhole)
	}
	t.Logf("small preset, 4 ranks: weights and gradients of the four roles %.4g GiB sharded, %.4g GiB whole", sharded, whole)
	if _, err := dryTrain("dmd", cfg, s, s.L, 2, true, 2, "bogus"); err == nil || !strings.Contains(err.Error(), "train.shard") {
		t.Errorf("shard bogus: error %v, want one naming train.shard", err)
	}
}

// TestBenchTrainDrySelfForcingRoles: the Self-Forcing job's parameter buffers on a bf16-GEMM device
// (the dry count of bench train): student and critic W and G and the EMA's W in fp32, the frozen
// teacher's W in bf16 only (20·P + 2·P bytes); the AdamW state is v alone for both trainable roles
// (β1 = 0: 2·4·P). Counting fp32 GEMMs, the teacher keeps fp32 weights (24·P).
func TestBenchTrainDrySelfForcingRoles(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	s := models.Shape{B: 1, F: 4, H: 4, W: 4, L: 3, Recompute: true, ChunkFrames: 2}
	_, P := cfg.Params()
	for _, bf16 := range []bool{true, false} {
		r, err := dryTrain("selfforcing", cfg, s, s.L, 1, bf16, 1, "none")
		if err != nil {
			t.Fatal(err)
		}
		items := r["at_peak_GiB"].(map[string]float64)
		params, moments := items["trainer.(*Trainer).build → models.newDiT"], items["trainer.(*Trainer).build"]
		want := float64(22*P) / (1 << 30)
		if !bf16 {
			want = float64(24*P) / (1 << 30)
		}
		if math.Abs(params-want) > 1e-12 || math.Abs(moments-float64(8*P)/(1<<30)) > 1e-12 {
			t.Errorf("bf16 GEMMs %v: parameter buffers %.6g GiB (want %.6g), AdamW state %.6g GiB (want 8·P = %.6g)",
				bf16, params, want, moments, float64(8*P)/(1<<30))
		}
	}
}
