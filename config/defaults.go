package config

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/fewstep/fewstep/dist"
)

// WanMean and WanStd are the per-channel statistics of Wan2.1's VAE latents (docs/data.md);
// normalize: wan applies (x − mean)/std per channel.
var (
	WanMean = []float64{-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
		0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921}
	WanStd = []float64{2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
		3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160}
)

// Defaults is the job every file starts from: the synthetic dataset (docs/data.md) and the tiny preset
// on the CPU.
func Defaults() Job {
	return Job{
		Name:   "job",
		Seed:   0,
		Device: "cpu",
		OutDir: "runs/job",
		Model: Model{
			Preset:      "tiny",
			ChunkFrames: 2,
		},
		Data: Data{
			Synth: Synth{
				Count:        2048,
				HeldoutCount: 256,
				Frames:       8,
				Size:         32,
				TextDim:      32,
				Seed:         0,
			},
			ODEPairs:   ODEPairs{Count: 0, Steps: 20},
			TextLen:    8,
			Normalize:  "none",
			Mean:       []float64{},
			Std:        []float64{},
			BatchSize:  8,
			CFGDropout: 0.1,
			Prefetch:   2,
		},
		Objective: "flowmatch",
		Params:    map[string]any{},
		Roles:     map[string]Role{},
		Train: Train{
			Steps:       1000,
			GradAccum:   1,
			ClipNorm:    1.0,
			LogEvery:    10,
			CkptEvery:   500,
			SampleEvery: 0,
			Shard:       "none",
			MaxBadSteps: 3,
			Noise:       "auto",
		},
		Sample: Sample{
			Steps:   50,
			CFG:     1,
			Shift:   1,
			Count:   8,
			Sampler: "euler",
		},
		Eval: Eval{
			Steps:        []int{1, 2, 4},
			TeacherSteps: 50,
			Count:        64,
		},
	}
}

// RoleDefaults are filled into every role for the fields a job leaves at zero.
var RoleDefaults = Role{Betas: []float64{0.9, 0.999}, Eps: 1e-8, Schedule: "constant"}

func (j *Job) fillRoleDefaults() {
	for name, r := range j.Roles {
		if r.Betas == nil {
			r.Betas = append([]float64(nil), RoleDefaults.Betas...)
		}
		if r.Eps == 0 {
			r.Eps = RoleDefaults.Eps
		}
		if r.Schedule == "" {
			r.Schedule = RoleDefaults.Schedule
		}
		j.Roles[name] = r
	}
	if j.Params == nil {
		j.Params = map[string]any{}
	}
	if j.Roles == nil {
		j.Roles = map[string]Role{}
	}
}

// MeanStd returns the per-channel normalization of the job's latents for C channels
// (nil, nil for normalize: none).
func (d *Data) MeanStd(C int) (mean, std []float64, err error) {
	switch d.Normalize {
	case "", "none":
		return nil, nil, nil
	case "wan":
		mean, std = WanMean, WanStd
	case "custom":
		mean, std = d.Mean, d.Std
	default:
		return nil, nil, fmt.Errorf("data.normalize: %q is not none, wan or custom", d.Normalize)
	}
	if len(mean) != C || len(std) != C {
		return nil, nil, fmt.Errorf("data.normalize %s: mean/std have %d/%d channels, the latents have %d",
			d.Normalize, len(mean), len(std), C)
	}
	return mean, std, nil
}

// Validate checks the values of a resolved job; every error names its key.
func (j *Job) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if _, err := dist.ParseDevices(j.Device); err != nil {
		bad("device: %v", err)
	}
	if j.Model.Preset == "" && j.Model.Config == "" {
		bad("model: set model.preset or model.config")
	}
	if j.Model.Causal && j.Model.ChunkFrames <= 0 {
		bad("model.chunk_frames: %d, must be > 0 for a causal model", j.Model.ChunkFrames)
	}
	if j.Model.LocalAttnFrames < 0 || j.Model.SinkFrames < 0 {
		bad("model.local_attn_frames/sink_frames: must be >= 0")
	}
	d := &j.Data
	if d.TextLen <= 0 {
		bad("data.text_len: %d, must be > 0", d.TextLen)
	}
	switch d.Normalize {
	case "none", "wan":
	case "custom":
		if len(d.Mean) == 0 || len(d.Mean) != len(d.Std) {
			bad("data.mean/data.std: normalize custom needs equal, non-empty lists (have %d and %d)", len(d.Mean), len(d.Std))
		}
		for i, s := range d.Std {
			if !(s > 0) || math.IsInf(s, 0) {
				bad("data.std[%d]: %g, must be finite and > 0", i, s)
			}
		}
	default:
		bad("data.normalize: %q is not none, wan or custom", d.Normalize)
	}
	if d.BatchSize <= 0 || d.BatchSize > 1<<16 {
		bad("data.batch_size: %d, must be in [1, 65536]", d.BatchSize)
	}
	if d.TextLen > 1<<16 {
		bad("data.text_len: %d, the limit is 65536", d.TextLen)
	}
	if !(d.CFGDropout >= 0 && d.CFGDropout <= 1) {
		bad("data.cfg_dropout: %g, must be in [0, 1]", d.CFGDropout)
	}
	if d.Prefetch < 0 {
		bad("data.prefetch: %d, must be >= 0", d.Prefetch)
	}
	if d.ODEPairs.Count < 0 {
		bad("data.ode_pairs.count: %d, must be >= 0", d.ODEPairs.Count)
	}
	if d.ODEPairs.Count > 0 {
		if d.ODEPairs.Steps < 1 {
			bad("data.ode_pairs.steps: %d, must be >= 1", d.ODEPairs.Steps)
		}
		if r, ok := j.Roles["teacher"]; !ok || r.Weights == "" {
			bad("data.ode_pairs.count: %d needs the teacher's weights (roles.teacher.weights)", d.ODEPairs.Count)
		}
	}
	s := &d.Synth
	if d.Path == "" {
		if s.Count <= 0 {
			bad("data.synth.count: %d, must be > 0", s.Count)
		}
		if s.HeldoutCount < 0 {
			bad("data.synth.heldout_count: %d, must be >= 0", s.HeldoutCount)
		}
		if s.Frames <= 0 {
			bad("data.synth.frames: %d, must be > 0", s.Frames)
		}
		if s.Size < 16 || s.Size%4 != 0 {
			bad("data.synth.size: %d, must be a multiple of 4 and >= 16", s.Size)
		}
		if s.TextDim <= 0 {
			bad("data.synth.text_dim: %d, must be > 0", s.TextDim)
		}
		if s.Count > 1<<24 || s.HeldoutCount > 1<<24 || s.Frames > 1<<12 || s.Size > 1<<12 || s.TextDim > 1<<16 {
			bad("data.synth: count %d, heldout_count %d, frames %d, size %d, text_dim %d: the limits are %d, %d, 4096, 4096, 65536",
				s.Count, s.HeldoutCount, s.Frames, s.Size, s.TextDim, 1<<24, 1<<24)
		}
	}
	names := make([]string, 0, len(j.Roles))
	for name := range j.Roles {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		r := j.Roles[name]
		if !finite(r.LR) || r.LR < 0 {
			bad("roles.%s.lr: %g, must be finite and >= 0", name, r.LR)
		}
		if len(r.Betas) != 2 || !(r.Betas[0] >= 0 && r.Betas[0] < 1) || !(r.Betas[1] >= 0 && r.Betas[1] < 1) {
			bad("roles.%s.betas: %v, want two values in [0, 1)", name, r.Betas)
		}
		if !finite(r.Eps) || r.Eps <= 0 {
			bad("roles.%s.eps: %g, must be finite and > 0", name, r.Eps)
		}
		if !finite(r.WeightDecay) || r.WeightDecay < 0 {
			bad("roles.%s.weight_decay: %g, must be finite and >= 0", name, r.WeightDecay)
		}
		if r.Warmup < 0 {
			bad("roles.%s.warmup: %d, must be >= 0", name, r.Warmup)
		}
		if r.Schedule != "constant" && r.Schedule != "cosine" {
			bad("roles.%s.schedule: %q is not constant or cosine", name, r.Schedule)
		}
		if !(r.EMADecay >= 0 && r.EMADecay < 1) {
			bad("roles.%s.ema_decay: %g, must be in [0, 1)", name, r.EMADecay)
		}
	}
	t := &j.Train
	if t.Steps < 0 {
		bad("train.steps: %d, must be >= 0", t.Steps)
	}
	if t.GradAccum <= 0 {
		bad("train.grad_accum: %d, must be > 0", t.GradAccum)
	}
	if !finite(t.ClipNorm) || t.ClipNorm < 0 {
		bad("train.clip_norm: %g, must be finite and >= 0 (0 = off)", t.ClipNorm)
	}
	if t.MaxBadSteps < 0 {
		bad("train.max_bad_steps: %d, must be >= 0", t.MaxBadSteps)
	}
	switch t.Shard {
	case "none", "optimizer", "full":
	default:
		bad("train.shard: %q, want none, optimizer or full", t.Shard)
	}
	switch t.Noise {
	case "auto", "host", "device":
	default:
		bad("train.noise: %q, want auto, host or device", t.Noise)
	}
	if t.LogEvery < 0 || t.CkptEvery < 0 || t.SampleEvery < 0 {
		bad("train.log_every/ckpt_every/sample_every: must be >= 0 (0 = never)")
	}
	sm := &j.Sample
	if sm.Steps <= 0 {
		bad("sample.steps: %d, must be > 0", sm.Steps)
	}
	if !finite(sm.Shift) || sm.Shift <= 0 {
		bad("sample.shift: %g, must be finite and > 0", sm.Shift)
	}
	if !finite(sm.CFG) {
		bad("sample.cfg: %g, must be finite", sm.CFG)
	}
	if sm.Count < 0 {
		bad("sample.count: %d, must be >= 0", sm.Count)
	}
	switch sm.Sampler {
	case "euler", "fewstep", "fewstep-ode", "consistency", "stream":
	default:
		bad("sample.sampler: %q is not euler, fewstep, fewstep-ode, consistency or stream", sm.Sampler)
	}
	for i, k := range j.Eval.Steps {
		if k <= 0 {
			bad("eval.steps[%d]: %d, must be > 0", i, k)
		}
	}
	if j.Eval.TeacherSteps < 0 || j.Eval.Count < 0 {
		bad("eval.teacher_steps/count: must be >= 0")
	}
	for i, m := range j.Data.Mean {
		if !finite(m) {
			bad("data.mean[%d]: %g, must be finite", i, m)
		}
	}
	if k := nonFiniteIn(j.Params, "params"); k != "" {
		bad("%s: must be a finite number", k)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid job: %s", strings.Join(errs, "; "))
	}
	return nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// nonFiniteIn is the key of the first NaN or Inf inside v (params: maps, lists, numbers), or "".
func nonFiniteIn(v any, key string) string {
	switch x := v.(type) {
	case float64:
		if !finite(x) {
			return key
		}
	case float32:
		if !finite(float64(x)) {
			return key
		}
	case map[string]any:
		ks := make([]string, 0, len(x))
		for k := range x {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		for _, k := range ks {
			sub := k
			if key != "" {
				sub = key + "." + k
			}
			if bad := nonFiniteIn(x[k], sub); bad != "" {
				return bad
			}
		}
	case []any:
		for i, e := range x {
			if bad := nonFiniteIn(e, fmt.Sprintf("%s[%d]", key, i)); bad != "" {
				return bad
			}
		}
	}
	return ""
}
