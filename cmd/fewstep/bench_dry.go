package main

import (
	"fmt"
	"os"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/trainer"
)

// benchJob is the job bench train runs for an objective: every role it declares, the student's
// EMA, clipping, generator and critic updated every step. bf16GEMM: the device's GEMMs and attention
// read bf16 operands, so selfforcing keeps its KV cache in bf16 (the same numbers, half the bytes).
func benchJob(obj string, bf16GEMM bool) config.Job {
	job := config.Defaults()
	job.Name, job.Objective, job.Seed, job.Device = "bench-"+obj, obj, 1, "cuda"
	job.OutDir = os.TempDir()
	job.Train.Steps, job.Train.ClipNorm = 1<<30, 1
	job.Params = map[string]any{}
	adam := func(lr float64) config.Role {
		return config.Role{LR: lr, Betas: []float64{0, 0.999}, Eps: 1e-8, Schedule: "constant"}
	}
	switch obj {
	case "dmd", "selfforcing":
		job.Params["generator_update_ratio"] = 1 // the generator and the critic every step
		job.Roles["student"] = config.Role{LR: 2e-6, Betas: []float64{0, 0.999}, Eps: 1e-8, Schedule: "constant", EMADecay: 0.99}
		job.Roles["critic"] = adam(4e-7)
	default:
		job.Roles["student"] = adam(1e-5)
	}
	if obj == "selfforcing" && bf16GEMM {
		job.Params["kv_cache_dtype"] = "bf16"
	}
	return job
}

// dryTrain builds bench train's job for obj on the counting device (models.DryDevice) and runs
// steps trainer steps: the bytes the step holds on the card (GEMMs in bf16 mode), at setup and at
// the peak, by item (GiB). No arithmetic runs; it takes seconds at Wan-1.3B sizes. With world > 1
// it is rank 0 of a job on world ranks (a communicator that moves nothing, dist.Dry) with
// train.shard shard, s.B being the batch of one rank.
func dryTrain(obj string, cfg models.Config, s models.Shape, L, steps int, bf16GEMM bool, world int, shard string) (map[string]any, error) {
	d := models.NewDryDevice()
	d.FP32GEMM = !bf16GEMM
	job := benchJob(obj, bf16GEMM)
	var comm dist.Comm
	if world > 1 || shard != "none" {
		if world < 1 {
			return nil, fmt.Errorf("--world %d: want at least 1", world)
		}
		comm = dist.Dry(0, world)
	}
	job.Train.Shard = shard // trainer.New checks it
	tr, err := trainer.New(trainer.Options{Job: &job, Dev: d, Model: cfg, Shape: s, Comm: comm,
		Null: make([]float32, L*cfg.TextDim), RandomInit: true,
		Source: benchSource{&trainer.HostBatch{X0: make([]float32, s.B*cfg.InDim*s.F*s.H*s.W),
			Ctx: make([]float32, s.B*L*cfg.TextDim), Drop: make([]bool, s.B)}}})
	if err != nil {
		return nil, err
	}
	setup := d.InUse()
	for i := 0; i < steps; i++ {
		if _, err := tr.TrainStep(); err != nil {
			return nil, fmt.Errorf("step %d: %w", i+1, err)
		}
	}
	const gib = 1 << 30
	items := map[string]float64{}
	for _, it := range d.Labels(false) {
		items[it.Label] = float64(it.Bytes) / gib
	}
	return map[string]any{"world": world, "shard": shard, "setup_GiB": float64(setup) / gib, "peak_GiB": float64(d.Peak()) / gib,
		"end_GiB": float64(d.InUse()) / gib, "at_peak_GiB": items,
		"note": "counted by models.DryDevice (rank 0 of world ranks): allocations, bf16 weight/activation copies and op scratch of the CUDA device in bf16 GEMM mode; not the CUDA context (~0.5 GiB), NCCL's buffers nor allocator slack"}, nil
}
