package objectives

import (
	"fmt"
	"math"
)

// DMDParams is the distribution-matching block shared by dmd, adversarial and selfforcing
// (docs/objectives.md): the generator's denoising list, the shift that warps it and DMD's σ law,
// the teacher's guidance, and the two time-scale ratio. Each objective embeds it squashed, so its
// keys sit directly under `params:`.
type DMDParams struct {
	Timesteps []float64 `mapstructure:"denoising_timesteps"`    // the generator's levels, t in (0, 1000], descending
	Shift     float64   `mapstructure:"shift"`                  // warps the denoising list and σ
	SigmaMin  float64   `mapstructure:"sigma_min"`              // DMD's σ ~ U[min, max] before the shift
	SigmaMax  float64   `mapstructure:"sigma_max"`              //
	CFG       float64   `mapstructure:"cfg"`                    // teacher guidance w (v = v_u + w·(v_c − v_u))
	Ratio     int       `mapstructure:"generator_update_ratio"` // generator updated every Ratio steps
}

// DMDDefaults is the block's defaults: t = 1000, 750, 500, 250, σ ~ U[0.02, 0.98], w = 4, ratio 5,
// and the given shift (1 for dmd and adversarial, 5 for selfforcing, as Self-Forcing ships).
func DMDDefaults(shift float64) DMDParams {
	return DMDParams{Timesteps: []float64{1000, 750, 500, 250}, Shift: shift, SigmaMin: 0.02, SigmaMax: 0.98, CFG: 4, Ratio: 5}
}

// validate checks the block and returns DMD's σ law; every error names its key.
func (p *DMDParams) validate() (SigmaLaw, error) {
	if err := checkTimesteps(p.Timesteps); err != nil {
		return SigmaLaw{}, err
	}
	switch {
	case p.Ratio < 1:
		return SigmaLaw{}, fmt.Errorf("params.generator_update_ratio: %d, must be ≥ 1", p.Ratio)
	case !(p.CFG >= 0) || math.IsInf(p.CFG, 0):
		return SigmaLaw{}, fmt.Errorf("params.cfg: %g, must be finite and ≥ 0", p.CFG)
	}
	law := SigmaLaw{Law: "uniform", Min: p.SigmaMin, Max: p.SigmaMax, Shift: p.Shift}
	return law, law.Validate()
}

func checkTimesteps(ts []float64) error {
	if len(ts) == 0 {
		return fmt.Errorf("params.denoising_timesteps: empty")
	}
	for i, t := range ts {
		if !(t > 0 && t <= 1000) || (i > 0 && t >= ts[i-1]) {
			return fmt.Errorf("params.denoising_timesteps: %v, want strictly descending values in (0, 1000]", ts)
		}
	}
	return nil
}

// Recipe is how an objective's product is sampled: the sampler its student was trained for and
// that sampler's settings (docs/objectives.md lists them per objective). pipeline.RecipeFor adds
// what the job knows (latent shape, normalisation, the causal window) and writes it as recipe.json
// beside an exported or checkpointed student.
type Recipe struct {
	// Sampler is sampler.Method's name: fewstep | fewstep-ode | consistency | stream | euler.
	Sampler string
	// Alternatives are other samplers the student may be sampled with (the job's sample.sampler
	// may pick one of them; anything else falls back to Sampler).
	Alternatives []string
	// Timesteps is the denoising list before the shift (t in (0, 1000], descending); nil for euler.
	Timesteps []float64
	Shift     float64
	// CFG is the guidance the student is sampled with (1: none, the teacher's guidance is distilled
	// in). For euler, CFG and Shift 0 mean the job's sample.cfg and sample.shift.
	CFG float64
	// TeacherCFG is the guidance the teacher was distilled with (its rows of the distillation table).
	TeacherCFG float64
	// GridN (consistency) snaps the list to the student's training grid of GridN Euler levels.
	GridN int
	// Causal: a block-causal student, chunks of ChunkFrames latent frames (0 = model.chunk_frames).
	Causal       bool
	ChunkFrames  int
	ContextNoise float64 // stream: σ at which finished chunks are re-encoded into the KV cache
}

// Sampled is implemented by every objective whose product is sampled: it says how.
type Sampled interface {
	Recipe() Recipe
}

func (o *dmd) Recipe() Recipe {
	return Recipe{Sampler: "fewstep", Alternatives: []string{"fewstep-ode"}, Timesteps: clone(o.p.Timesteps),
		Shift: o.p.Shift, CFG: 1, TeacherCFG: o.p.CFG}
}

func (o *Adversarial) Recipe() Recipe {
	return Recipe{Sampler: "fewstep", Alternatives: []string{"fewstep-ode"}, Timesteps: clone(o.P.Timesteps),
		Shift: o.P.Shift, CFG: 1, TeacherCFG: o.P.CFG}
}

func (o *SelfForcing) Recipe() Recipe {
	return Recipe{Sampler: "stream", Timesteps: clone(o.P.Timesteps), Shift: o.P.Shift, CFG: 1, TeacherCFG: o.P.CFG,
		Causal: true, ChunkFrames: o.P.ChunkFrames, ContextNoise: o.P.ContextNoise}
}

// Recipe of odeinit: its causal student regresses the teacher's ODE pairs, recorded at the levels
// of the default denoising list (`fewstep data ode-pairs`), and streams over them.
func (o *ODEInit) Recipe() Recipe {
	return Recipe{Sampler: "stream", Alternatives: []string{"fewstep", "fewstep-ode"}, Timesteps: []float64{1000, 750, 500, 250},
		Shift: 1, CFG: 1, TeacherCFG: 1, Causal: true, ChunkFrames: o.P.ChunkFrames}
}

// Recipe of consistency: LCM's multistep sampling over 4 levels snapped to the training grid; the
// teacher's guidance (cfg, or the middle of [cfg_min, cfg_max]) is distilled in.
func (o *Consistency) Recipe() Recipe {
	w := o.P.CFG
	if o.P.CFGMax > 0 {
		w = (o.P.CFGMin + o.P.CFGMax) / 2
	}
	return Recipe{Sampler: "consistency", Timesteps: []float64{1000, 750, 500, 250}, Shift: o.P.Shift, CFG: 1,
		TeacherCFG: w, GridN: o.P.GridN}
}

// Recipe of flowmatch: a teacher, sampled with Euler and the job's sample.steps, cfg and shift.
func (o *flowmatch) Recipe() Recipe {
	return Recipe{Sampler: "euler"}
}

func clone(s []float64) []float64 { return append([]float64(nil), s...) }
