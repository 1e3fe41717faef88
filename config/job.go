// Package config is the YAML job schema. A job file is read through viper (file, then FEWSTEP_*
// environment variables, then --set key=value overrides; later wins) and decoded strictly: an
// unknown key is an error naming the key and the file. The objective's own knobs live under
// `params:` and are decoded strictly by the objective itself.
package config

// Job is one resolved job.
type Job struct {
	Name      string          `mapstructure:"name" yaml:"name" json:"name"`
	Seed      int64           `mapstructure:"seed" yaml:"seed" json:"seed"`
	Device    string          `mapstructure:"device" yaml:"device" json:"device"`    // cpu | cuda | cuda:N | cpu:N | cuda:0,1,… | all (dist/devices.go)
	OutDir    string          `mapstructure:"out_dir" yaml:"out_dir" json:"out_dir"` // run folder
	Model     Model           `mapstructure:"model" yaml:"model" json:"model"`
	Data      Data            `mapstructure:"data" yaml:"data" json:"data"`
	Objective string          `mapstructure:"objective" yaml:"objective" json:"objective"` // registry name
	Params    map[string]any  `mapstructure:"params" yaml:"params" json:"params"`          // the objective's knobs
	Roles     map[string]Role `mapstructure:"roles" yaml:"roles" json:"roles"`             // student, teacher, critic, discriminator, ...
	Train     Train           `mapstructure:"train" yaml:"train" json:"train"`
	Sample    Sample          `mapstructure:"sample" yaml:"sample" json:"sample"`
	Eval      Eval            `mapstructure:"eval" yaml:"eval" json:"eval"`
}

// Model is the architecture shared by every role of a job.
type Model struct {
	Preset          string `mapstructure:"preset" yaml:"preset" json:"preset"`                   // tiny | small | wan2.1-1.3b | wan2.1-14b
	Config          string `mapstructure:"config" yaml:"config" json:"config"`                   // Wan config.json (overrides preset)
	Causal          bool   `mapstructure:"causal" yaml:"causal" json:"causal"`                   // block-causal student
	ChunkFrames     int    `mapstructure:"chunk_frames" yaml:"chunk_frames" json:"chunk_frames"` // latent frames per chunk (3)
	LocalAttnFrames int    `mapstructure:"local_attn_frames" yaml:"local_attn_frames" json:"local_attn_frames"`
	SinkFrames      int    `mapstructure:"sink_frames" yaml:"sink_frames" json:"sink_frames"`
	Recompute       bool   `mapstructure:"recompute" yaml:"recompute" json:"recompute"` // recompute each block's activations in backward
}

// Data is where the latents come from and how they are batched.
type Data struct {
	Path       string    `mapstructure:"path" yaml:"path" json:"path"`                // file or folder (Arrow IPC / Parquet)
	Heldout    string    `mapstructure:"heldout" yaml:"heldout" json:"heldout"`       // evaluation split
	Synth      Synth     `mapstructure:"synth" yaml:"synth" json:"synth"`             // used when path is empty
	ODEPairs   ODEPairs  `mapstructure:"ode_pairs" yaml:"ode_pairs" json:"ode_pairs"` // teacher ODE pairs made before training
	TextLen    int       `mapstructure:"text_len" yaml:"text_len" json:"text_len"`
	Normalize  string    `mapstructure:"normalize" yaml:"normalize" json:"normalize"` // none | wan | custom
	Mean       []float64 `mapstructure:"mean" yaml:"mean" json:"mean"`
	Std        []float64 `mapstructure:"std" yaml:"std" json:"std"`
	BatchSize  int       `mapstructure:"batch_size" yaml:"batch_size" json:"batch_size"`
	CFGDropout float64   `mapstructure:"cfg_dropout" yaml:"cfg_dropout" json:"cfg_dropout"`
	Prefetch   int       `mapstructure:"prefetch" yaml:"prefetch" json:"prefetch"`
}

// Synth describes the embedded synthetic dataset (docs/data.md).
type Synth struct {
	Count        int   `mapstructure:"count" yaml:"count" json:"count"`
	HeldoutCount int   `mapstructure:"heldout_count" yaml:"heldout_count" json:"heldout_count"`
	Frames       int   `mapstructure:"frames" yaml:"frames" json:"frames"`
	Size         int   `mapstructure:"size" yaml:"size" json:"size"`
	TextDim      int   `mapstructure:"text_dim" yaml:"text_dim" json:"text_dim"`
	Seed         int64 `mapstructure:"seed" yaml:"seed" json:"seed"`
}

// ODEPairs, with Count > 0, replaces the training data by teacher ODE pairs made before training
// (`fewstep data ode-pairs`; for dmd's regression: ode): the teacher (roles.teacher.weights) integrates
// the flow ODE without guidance from noise for the first Count prompts of the data, with Euler Steps,
// recorded at params.denoising_timesteps; written once into the run folder's data/.
type ODEPairs struct {
	Count int `mapstructure:"count" yaml:"count" json:"count"`
	Steps int `mapstructure:"steps" yaml:"steps" json:"steps"`
}

// Role is one trained or frozen network of a job and its optimizer.
type Role struct {
	Weights     string    `mapstructure:"weights" yaml:"weights" json:"weights"` // init checkpoint ("" = Wan init, or as the objective says)
	LR          float64   `mapstructure:"lr" yaml:"lr" json:"lr"`
	Betas       []float64 `mapstructure:"betas" yaml:"betas" json:"betas"`
	Eps         float64   `mapstructure:"eps" yaml:"eps" json:"eps"`
	WeightDecay float64   `mapstructure:"weight_decay" yaml:"weight_decay" json:"weight_decay"`
	Warmup      int       `mapstructure:"warmup" yaml:"warmup" json:"warmup"`
	Schedule    string    `mapstructure:"schedule" yaml:"schedule" json:"schedule"` // constant | cosine
	EMADecay    float64   `mapstructure:"ema_decay" yaml:"ema_decay" json:"ema_decay"`
	EMAStart    int       `mapstructure:"ema_start" yaml:"ema_start" json:"ema_start"`
}

// Train is the loop.
type Train struct {
	Steps       int     `mapstructure:"steps" yaml:"steps" json:"steps"`
	GradAccum   int     `mapstructure:"grad_accum" yaml:"grad_accum" json:"grad_accum"`
	ClipNorm    float64 `mapstructure:"clip_norm" yaml:"clip_norm" json:"clip_norm"`
	LogEvery    int     `mapstructure:"log_every" yaml:"log_every" json:"log_every"`
	CkptEvery   int     `mapstructure:"ckpt_every" yaml:"ckpt_every" json:"ckpt_every"`
	SampleEvery int     `mapstructure:"sample_every" yaml:"sample_every" json:"sample_every"`
	Resume      string  `mapstructure:"resume" yaml:"resume" json:"resume"`                // checkpoint folder
	TensorBoard bool    `mapstructure:"tensorboard" yaml:"tensorboard" json:"tensorboard"` // also write metrics as TensorBoard events (RUN/tensorboard/)
	// Shard is how a job on several ranks splits its state (trainer/dist.go): none (every rank
	// holds everything), optimizer (each rank holds the AdamW moments and fp32 master weights of its
	// 1/N of every role), full (also the blocks' weights and gradients of every DiT role, gathered
	// per block: FSDP).
	Shard string `mapstructure:"shard" yaml:"shard" json:"shard"`
	// MaxBadSteps: a step whose loss or gradient norm is NaN or Inf is skipped (no update); up to
	// this many are skipped in a run, one more stops the job with an error (0 = stop at the first).
	MaxBadSteps int `mapstructure:"max_bad_steps" yaml:"max_bad_steps" json:"max_bad_steps"`
	// Noise is where a step's Gaussian noise is drawn (objectives.RandnSamples): host (each sample's
	// PCG stream, uploaded: the CPU-equal draws), device (Philox4x32-10 on the device, keyed by the
	// same streams) or auto (device on a GPU, host on the CPU).
	Noise string `mapstructure:"noise" yaml:"noise" json:"noise"`
}

// Sample is how validation and `fewstep sample` draw videos.
type Sample struct {
	Steps   int     `mapstructure:"steps" yaml:"steps" json:"steps"`
	CFG     float64 `mapstructure:"cfg" yaml:"cfg" json:"cfg"` // v = v_u + w·(v_c − v_u); 1 = none
	Shift   float64 `mapstructure:"shift" yaml:"shift" json:"shift"`
	Count   int     `mapstructure:"count" yaml:"count" json:"count"`
	Sampler string  `mapstructure:"sampler" yaml:"sampler" json:"sampler"` // euler | fewstep | consistency | stream
}

// Eval is the distillation table's setup.
type Eval struct {
	Steps        []int `mapstructure:"steps" yaml:"steps" json:"steps"`                         // k ∈ {1, 2, 4}
	TeacherSteps int   `mapstructure:"teacher_steps" yaml:"teacher_steps" json:"teacher_steps"` // 50
	Count        int   `mapstructure:"count" yaml:"count" json:"count"`
}
