package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/sampler"
	"github.com/fewstep/fewstep/trainer"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// `fewstep sample`: videos from a checkpoint for held-out prompts (or --caption), written as a
// samples file (safetensors `latents` [N,C,F,H,W], in the dataset's raw latent space), a
// manifest.jsonl, and GIF / PNG-strip previews when the latent space is the synthetic one.

var sampleCmd = &cobra.Command{
	Use:   "sample",
	Short: "Sample videos from a checkpoint: samples.safetensors + manifest.jsonl + previews",
	Long: `Sample videos from a checkpoint: --from RUN (a run folder, its checkpoints folder or one
checkpoint folder: the EMA, else the student, of its latest checkpoint, with the job that trained
it, its config.json and latent.json; nothing else is needed), or --weights FILE (Wan2.1 layout).
The architecture is --model-config, else the config.json beside the weights, else the job's model
(preset, with in/out channels and text_dim taken from the prompts' dataset).

How to sample is the recipe.json beside the weights (written by fewstep export: sampler,
denoising list, shift, guidance, causal chunk and window, normalisation), else --recipe FILE, else
the job's sample: and model: sections; the flags below override either.

Samplers (--sampler, default sample.sampler):
  euler        the flow ODE, N steps, CFG w (teachers; flowmatch-trained networks)
  fewstep      predict x0, re-noise to the next level (DMD, DMD+adversarial, odeinit students)
  fewstep-ode  the same levels, re-noised with the predicted noise (DDIM, η = 0): deterministic
  consistency  LCM multistep consistency sampling (consistency students; --grid-n snaps σ)
  stream       causal chunk-by-chunk with the KV cache (Self-Forcing student; model.chunk_frames,
               model.local_attn_frames, model.sink_frames; --frames may exceed the training length)

Writes OUT/samples.safetensors, OUT/manifest.jsonl (index, caption, seed, steps, cfg, ...),
OUT/previews/NNNN.gif and NNNN.png (synthetic 48-channel latents only), OUT/job.yaml.`,
	Args: cobra.NoArgs,
	RunE: runSample,
}

func init() {
	f := sampleCmd.Flags()
	f.String("from", "", "a run folder or checkpoint folder (its job, architecture and latent shape come with it)")
	f.String("role", "", "the role to sample from --from: ema (default when present) or student, or any role")
	f.String("weights", "", "a checkpoint file (safetensors, Wan2.1 keys) instead of --from")
	f.String("model-config", "", "Wan config.json of the checkpoint (default: config.json beside --weights, else the job's model)")
	f.String("recipe", "", "recipe.json saying how to sample the checkpoint (default: recipe.json beside --weights, else the job)")
	f.String("prompts", "", "dataset whose captions and text embeddings are the prompts (default: data.heldout)")
	f.String("embeddings", "", "safetensors of prompt embeddings: context [N, L, text_dim] (and null [L, text_dim] for guidance); the latent shape is the recipe's")
	f.StringArray("caption", nil, "a caption to sample (repeatable; toy text encoder, synthetic data only) instead of --prompts")
	f.String("sampler", "", "euler | fewstep | fewstep-ode | consistency | stream (default: sample.sampler)")
	f.Int("steps", 0, "steps (default: sample.steps)")
	f.Float64("cfg", 0, "guidance w, v = v_u + w·(v_c − v_u); 1 = none (default: the recipe's, else sample.cfg)")
	f.Float64("shift", 0, "schedule shift (default: the recipe's, else sample.shift)")
	f.String("timesteps", "", "fewstep/consistency/stream: the exact denoising list as timesteps before the shift (e.g. 1000,750,500,250; overrides --steps)")
	f.Int("grid-n", 0, "consistency: snap σ to this Euler grid (the student's training grid, e.g. 50)")
	f.Float64("context-noise", 0, "stream: σ at which finished chunks are re-encoded into the cache")
	f.Int("count", 0, "videos (default: sample.count; at most the prompts available)")
	f.Int("frames", 0, "latent frames per video (default: the dataset's; stream may go longer)")
	f.Int("batch", 8, "videos per batch")
	f.Int64("seed", 0, "noise seed; video i uses seed+i (default: the job's seed)")
	f.String("device", "", "cpu | cuda | cuda:N (default: the job's device)")
	f.String("out", "", "output folder (default: OUT_DIR/samples)")
	f.Int("preview-scale", 4, "pixel upscaling of the previews")
	addJobFlags(sampleCmd)
	rootCmd.AddCommand(sampleCmd)
}

// loadPrompts reads --prompts (or the job's held-out split), or encodes --caption with the toy
// encoder at the recipe's latent shape, else the checkpoint's (lat, from latent.json), else the
// job's synthetic one.
func loadPrompts(cmd *cobra.Command, job *config.Job, lat *trainer.Latent, rec *pipeline.Recipe) (*eval.Set, error) {
	caps, _ := cmd.Flags().GetStringArray("caption")
	path, _ := cmd.Flags().GetString("prompts")
	if emb, _ := cmd.Flags().GetString("embeddings"); emb != "" {
		if path != "" || len(caps) > 0 {
			return nil, fmt.Errorf("give one of --embeddings, --prompts, --caption")
		}
		return loadEmbeddings(emb, rec)
	}
	L := job.Data.TextLen
	if rec != nil {
		L = rec.TextLen
	}
	if len(caps) > 0 {
		if path != "" {
			return nil, fmt.Errorf("give --prompts or --caption, not both")
		}
		sy := job.Data.Synth
		s := &eval.Set{N: len(caps), C: data.LatentChannels, F: sy.Frames, H: sy.Size / 4, W: sy.Size / 4, L: L, TextDim: sy.TextDim}
		if rec != nil {
			if !rec.Decodes() {
				return nil, fmt.Errorf("--caption: the recipe's latent space is %s; the toy text encoder is the synthetic space's (give --prompts)", rec.LatentSpace)
			}
			s.F, s.H, s.W, s.TextDim = rec.Frames, rec.Height, rec.Width, rec.TextDim
		} else if sy.Size%4 != 0 || sy.Size <= 0 || sy.Frames <= 0 || sy.TextDim <= 0 {
			return nil, fmt.Errorf("--caption needs the synthetic shape: data.synth.size %d (multiple of 4), frames %d, text_dim %d", sy.Size, sy.Frames, sy.TextDim)
		}
		if lat != nil && rec == nil {
			if !lat.Synthetic {
				return nil, fmt.Errorf("--caption needs the synthetic latent space; this checkpoint's latents are %v (normalize %s): give --prompts", lat.Shape, lat.Normalize)
			}
			s.F, s.H, s.W, s.L, s.TextDim = lat.Shape[1], lat.Shape[2], lat.Shape[3], lat.TextLen, lat.TextDim
		}
		for i, c := range caps {
			if _, _, _, err := data.ParseCaption(c); err != nil {
				return nil, fmt.Errorf("--caption %d: %w", i, err)
			}
			s.Text = append(s.Text, data.EncodeText(c, sy.TextDim, L)...)
			s.Captions = append(s.Captions, c)
			s.IDs = append(s.IDs, "caption-"+strconv.Itoa(i))
		}
		return s, nil
	}
	if path == "" {
		path = job.Data.Heldout
	}
	if path == "" {
		return nil, fmt.Errorf("no prompts: give --prompts DATASET, --caption, or set data.heldout")
	}
	return eval.LoadSet(path, L)
}

func fileExists(p string) bool { st, err := os.Stat(p); return err == nil && !st.IsDir() }

// loadEmbeddings reads prompts given as embeddings (safetensors context [N, L, text_dim], optional
// null [L, text_dim]); the latent shape comes from the recipe.
func loadEmbeddings(path string, rec *pipeline.Recipe) (*eval.Set, error) {
	if rec == nil {
		return nil, fmt.Errorf("--embeddings: the latent shape comes from the recipe: give --recipe or keep recipe.json beside the weights")
	}
	ts, _, err := models.ReadSafetensors(path)
	if err != nil {
		return nil, fmt.Errorf("--embeddings: %w", err)
	}
	c, ok := ts["context"]
	if !ok || len(c.Shape) != 3 || c.Shape[0] < 1 || c.Shape[2] != rec.TextDim || c.Shape[1] > rec.TextLen {
		return nil, fmt.Errorf("--embeddings %s: want a tensor context [N, L ≤ %d, %d]", path, rec.TextLen, rec.TextDim)
	}
	N, L := c.Shape[0], c.Shape[1]
	s := &eval.Set{N: N, C: rec.LatentChannels, F: rec.Frames, H: rec.Height, W: rec.Width, L: L, TextDim: rec.TextDim, Text: c.Data}
	if nl, ok := ts["null"]; ok {
		if len(nl.Shape) != 2 || nl.Shape[0] != L || nl.Shape[1] != rec.TextDim {
			return nil, fmt.Errorf("--embeddings %s: null has shape %v, want [%d, %d]", path, nl.Shape, L, rec.TextDim)
		}
		s.Null = nl.Data
	} else {
		s.Null = make([]float32, L*rec.TextDim)
	}
	for i := 0; i < N; i++ {
		s.Captions = append(s.Captions, "")
		s.IDs = append(s.IDs, "embedding-"+strconv.Itoa(i))
		s.Tokens = append(s.Tokens, L)
	}
	return s, nil
}

// sampleRecipe is --recipe, else the recipe.json beside the weights, else nil (the job decides).
func sampleRecipe(cmd *cobra.Command, weights string) (*pipeline.Recipe, error) {
	p, _ := cmd.Flags().GetString("recipe")
	if p == "" {
		p = filepath.Join(filepath.Dir(weights), pipeline.RecipeFile)
		if !fileExists(p) {
			return nil, nil
		}
	}
	return pipeline.LoadRecipe(p)
}

// sampleOptions starts from the recipe (or, without one, the job's sample: and model: sections)
// and applies the flags.
func sampleOptions(cmd *cobra.Command, job *config.Job, rec *pipeline.Recipe) (sampler.Options, error) {
	f := cmd.Flags()
	o := sampler.Options{Method: sampler.Method(job.Sample.Sampler), Steps: job.Sample.Steps, CFG: job.Sample.CFG, Shift: job.Sample.Shift,
		ChunkFrames: job.Model.ChunkFrames, LocalFrames: job.Model.LocalAttnFrames, SinkFrames: job.Model.SinkFrames}
	if rec != nil {
		o = rec.Options(0)
		if err := pipeline.JobWindow(&o, job); err != nil { // model.local_attn_frames over the recipe's
			return o, err
		}
	}
	if s, _ := f.GetString("sampler"); s != "" && sampler.Method(s) != o.Method {
		o.Method = sampler.Method(s)
		if o.Method == sampler.Euler {
			o.Sigmas, o.Steps = nil, job.Sample.Steps
		}
	}
	if n, _ := f.GetInt("steps"); n != 0 {
		o.Steps = n
		if rec != nil && o.Method != sampler.Euler {
			o.Sigmas = rec.Options(n).Sigmas
		}
	}
	for _, fl := range []struct {
		name string
		dst  *float64
	}{{"cfg", &o.CFG}, {"shift", &o.Shift}} {
		if f.Changed(fl.name) {
			v, _ := f.GetFloat64(fl.name)
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || fl.name == "shift" && v == 0 {
				return o, fmt.Errorf("--%s %g: want a finite number ≥ 0 (shift > 0)", fl.name, v)
			}
			*fl.dst = v
		}
	}
	if rec != nil && f.Changed("shift") && o.Method != sampler.Euler && o.Method == sampler.Method(rec.Sampler) {
		r := *rec // the recipe's list under the new shift
		r.Shift = o.Shift
		o.Sigmas = r.Options(o.Steps).Sigmas
	}
	if ts, _ := f.GetString("timesteps"); ts != "" {
		if o.Method == sampler.Euler {
			return o, fmt.Errorf("--timesteps is the denoising list of a few-step sampler, not euler's grid")
		}
		o.Sigmas = nil
		for _, s := range strings.Split(ts, ",") {
			v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil || v <= 0 || v > 1000 {
				return o, fmt.Errorf("--timesteps %q: %q is not a timestep in (0, 1000]", ts, s)
			}
			o.Sigmas = append(o.Sigmas, sampler.Shift(v/1000, o.Shift))
		}
		o.Steps = len(o.Sigmas)
	}
	if f.Changed("grid-n") || rec == nil {
		o.GridN, _ = f.GetInt("grid-n")
	}
	if f.Changed("context-noise") || rec == nil {
		o.ContextNoise, _ = f.GetFloat64("context-noise")
	}
	if o.Method == sampler.Stream && o.ChunkFrames <= 0 {
		return o, fmt.Errorf("--sampler stream needs model.chunk_frames > 0")
	}
	_, err := o.Schedule()
	return o, err
}

// checkSampleFlags refuses, before anything is loaded, flag values that no sampler takes: a
// negative count (0 is the default), a batch or preview scale below 1, a σ outside [0, 1), an
// unknown sampler.
func checkSampleFlags(f *pflag.FlagSet) error {
	if err := intFlagsAtLeast(f, 0, "steps", "count", "frames", "grid-n"); err != nil {
		return err
	}
	if err := intFlagsAtLeast(f, 1, "batch", "preview-scale"); err != nil {
		return err
	}
	if v, _ := f.GetFloat64("context-noise"); !(v >= 0 && v < 1) {
		return fmt.Errorf("--context-noise %g: want a σ in [0, 1)", v)
	}
	return samplerFlag(f, "sampler")
}

// intFlagsAtLeast refuses an int flag of names below lo, naming it (lo 0: its 0 is the default).
func intFlagsAtLeast(f *pflag.FlagSet, lo int, names ...string) error {
	for _, name := range names {
		if v, _ := f.GetInt(name); v < lo {
			if lo == 0 {
				return fmt.Errorf("--%s %d: want ≥ 0 (0: the default)", name, v)
			}
			return fmt.Errorf("--%s %d: want ≥ %d", name, v, lo)
		}
	}
	return nil
}

// samplerFlag refuses a sampler flag (name) that names no sampler; empty is the default.
func samplerFlag(f *pflag.FlagSet, name string) error {
	if s, _ := f.GetString(name); s != "" {
		if _, err := sampler.ParseMethod(s); err != nil {
			return fmt.Errorf("--%s: %w", name, err)
		}
	}
	return nil
}

// manifestLine is one line of manifest.jsonl.
type manifestLine struct {
	Index   int     `json:"index"`
	ID      string  `json:"id"`
	Caption string  `json:"caption"`
	Seed    int64   `json:"seed"`
	Steps   int     `json:"steps"`
	CFG     float64 `json:"cfg"`
	Sampler string  `json:"sampler"`
	Shift   float64 `json:"shift"`
	Frames  int     `json:"frames"`
	NFE     int     `json:"nfe"`
	Weights string  `json:"weights"`
}

func runSample(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	if err := checkSampleFlags(fl); err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	weights, _ := fl.GetString("weights")
	from, _ := fl.GetString("from")
	var job *config.Job
	var space *trainer.Latent // latent.json of --from
	var err error
	switch {
	case from != "" && weights != "":
		return fmt.Errorf("sample: give --from or --weights, not both")
	case from != "":
		role, _ := fl.GetString("role")
		r, err := resolveFrom(cmd, from, role)
		if err != nil {
			return fmt.Errorf("sample: %w", err)
		}
		job, weights, space = r.job, r.weights, r.latent
	case weights == "":
		return fmt.Errorf("sample: --from RUN or --weights FILE is required")
	default:
		if job, err = loadJob(cmd); err != nil {
			return err
		}
	}
	rec, err := sampleRecipe(cmd, weights)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	set, err := loadPrompts(cmd, job, space, rec)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	o, err := sampleOptions(cmd, job, rec)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	devName, _ := fl.GetString("device")
	if devName == "" {
		devName = job.Device
	}
	dev, err := pipeline.OpenBackend(devName)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	mc, _ := fl.GetString("model-config")
	m, mcfg, err := pipeline.LoadModel(dev, job, weights, mc, set.C, set.TextDim)
	if err == nil {
		err = fitContext(set, mcfg) // Wan: every context zero-padded to text_len
	}
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	pipeline.ForInference(m) // a GPU samples with bf16 GEMMs on kept bf16 copies of the weights
	count, _ := fl.GetInt("count")
	if count <= 0 {
		count = job.Sample.Count
	}
	if count <= 0 || count > set.N {
		count = set.N
	}
	frames, _ := fl.GetInt("frames")
	if frames <= 0 {
		frames = set.F
	}
	// The latents of every video stay in memory (plus the model's activations of one batch): refuse
	// what the machine cannot hold before anything is allocated.
	if frames > 1<<16 {
		return fmt.Errorf("sample: --frames %d, the limit is 65536", frames)
	}
	if need := 4 * int64(count) * int64(set.C) * int64(frames) * int64(set.H) * int64(set.W); need > hostMemory() {
		return fmt.Errorf("sample: %d videos of [%d, %d, %d, %d] latents need %.1f GiB, more than this machine's %.1f GiB of memory",
			count, set.C, frames, set.H, set.W, float64(need)/(1<<30), float64(hostMemory())/(1<<30))
	}
	batch, _ := fl.GetInt("batch")
	seed, _ := fl.GetInt64("seed")
	if !fl.Changed("seed") {
		seed = job.Seed
	}
	out, _ := fl.GetString("out")
	if out == "" {
		out = filepath.Join(job.OutDir, "samples")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if _, err := saveJob(job, out); err != nil {
		return err
	}
	chunk := 0 // block-causal forwards for the causal student (model.causal), whatever the sampler
	if rec != nil {
		chunk = rec.NetChunkFrames()
	} else if o.Method == sampler.Stream || job.Model.Causal {
		chunk = o.ChunkFrames
	}
	net := sampler.NewDiTNet(m, chunk)
	defer net.Free()
	lat, nfe, ms, err := eval.Generate(net, set, count, batch, seed, o, frames)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	mean, std := pipeline.NormStats(job, set.C)
	if rec != nil {
		mean, std = rec.Mean, rec.Std
	}
	if err := eval.Denormalize(lat, count, set.C, mean, std); err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	shape := []int{count, set.C, frames, set.H, set.W}
	meta := map[string]string{"sampler": string(o.Method), "steps": strconv.Itoa(o.Steps), "cfg": fmt.Sprint(o.CFG),
		"shift": fmt.Sprint(o.Shift), "seed": strconv.FormatInt(seed, 10), "weights": weights, "space": "raw dataset latents"}
	samplesPath := filepath.Join(out, "samples.safetensors")
	if err := models.WriteSafetensors(samplesPath, []models.NamedTensor{{Name: "latents", Shape: shape, Data: lat}}, kernels.F32, meta); err != nil {
		return err
	}
	var man []byte
	for i := 0; i < count; i++ {
		b, _ := json.Marshal(manifestLine{Index: i, ID: set.IDs[i], Caption: set.Captions[i], Seed: seed + int64(i), Steps: o.Steps, CFG: o.CFG,
			Sampler: string(o.Method), Shift: o.Shift, Frames: frames, NFE: nfe, Weights: weights})
		man = append(append(man, b...), '\n')
	}
	if err := os.WriteFile(filepath.Join(out, "manifest.jsonl"), man, 0o644); err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "sample: %d videos [%d, %d, %d, %d] with %s, %d steps, cfg %g, shift %g: NFE %d per video, %.1f ms per video (%s)\n",
		count, set.C, frames, set.H, set.W, o.Method, o.Steps, o.CFG, o.Shift, nfe, ms, dev.Name())
	fmt.Fprintf(w, "  %s\n  %s\n", samplesPath, filepath.Join(out, "manifest.jsonl"))
	if set.C != data.LatentChannels {
		fmt.Fprintf(w, "  no previews: %d-channel latents are not the synthetic space (decode them with the VAE)\n", set.C)
		return nil
	}
	scale, _ := fl.GetInt("preview-scale")
	pdir := filepath.Join(out, "previews")
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return err
	}
	vids, err := eval.DecodeLatents(lat, count, set.C, frames, set.H, set.W)
	if err != nil {
		return err
	}
	for i, pix := range vids.Pix {
		base := filepath.Join(pdir, fmt.Sprintf("%04d", i))
		if err := sampler.WriteGIF(base+".gif", pix, vids.F, vids.H, vids.W, scale, 250); err != nil {
			return err
		}
		if err := sampler.WritePNGStrip(base+".png", pix, vids.F, vids.H, vids.W, scale); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "  %s/NNNN.gif, NNNN.png (%d each)\n", pdir, count)
	return nil
}
