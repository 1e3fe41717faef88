package pipeline

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
)

// OpenBackend opens the engine backend a --device flag names: "cpu", "cuda" (GPU 0) or "cuda:N".
// Without a usable GPU, "cuda" returns an error that says why (no driver, driver too old, no device).
func OpenBackend(name string) (kernels.Device, error) {
	if name == "cpu" {
		return kernels.CPU(), nil
	}
	g, err := OpenCUDA(name)
	if err != nil {
		return nil, err
	}
	return g, nil
}

// OpenCUDA opens "cuda" or "cuda:N" as the concrete CUDA device (graphs, events, GEMM modes).
func OpenCUDA(name string) (*cuda.Device, error) {
	ord := 0
	switch {
	case name == "cuda":
	case strings.HasPrefix(name, "cuda:"):
		n, err := strconv.Atoi(name[5:])
		if err != nil || n < 0 {
			return nil, fmt.Errorf("--device %q: want cuda:N with N a GPU ordinal", name)
		}
		ord = n
	default:
		return nil, fmt.Errorf("--device %q: want cpu, cuda or cuda:N", name)
	}
	d, err := cuda.New(ord)
	if err != nil {
		return nil, fmt.Errorf("--device %s: %w", name, err)
	}
	return d, nil
}

// LoadModel builds the architecture for a checkpoint and loads it. The config is modelConfig, else
// config.json beside the weights, else the job's model config, else its preset with in/out
// channels C and textDim (the data's) and text_len from data.text_len.
func LoadModel(dev kernels.Device, job *config.Job, weights, modelConfig string, C, textDim int) (*models.DiT, models.Config, error) {
	if modelConfig == "" {
		if p := filepath.Join(filepath.Dir(weights), "config.json"); fileExists(p) {
			modelConfig = p
		} else if job.Model.Config != "" {
			modelConfig = job.Model.Config
		}
	}
	var cfg models.Config
	var err error
	if modelConfig != "" {
		cfg, err = models.ReadWanConfig(modelConfig)
	} else {
		cfg, err = models.Preset(job.Model.Preset)
		cfg.InDim, cfg.OutDim, cfg.TextDim = C, C, textDim
		if job.Data.TextLen > 0 {
			cfg.TextLen = job.Data.TextLen
		}
	}
	if err != nil {
		return nil, cfg, err
	}
	if cfg.InDim != C || cfg.TextDim != textDim {
		return nil, cfg, fmt.Errorf("model %s: in_dim %d, text_dim %d, but the prompts' latents have %d channels and text_dim %d", weights, cfg.InDim, cfg.TextDim, C, textDim)
	}
	m := models.New(dev, cfg, false)
	if err := m.Load(weights); err != nil {
		return nil, cfg, err
	}
	return m, cfg, nil
}

// InferConfig reads the architecture off a Wan2.1 state dict's shapes (either layout); heads (not visible in any
// shape) come from heads > 0 or the preset of the same width; text_len from textLen (0 = 512).
func InferConfig(ts map[string]models.NamedTensor, heads, textLen int) (models.Config, error) {
	keys := make([]string, 0, len(ts))
	for k := range ts {
		keys = append(keys, k)
	}
	if models.DetectLayout(keys) == models.LayoutDiffusers { // read the shapes under Wan's names
		wan := make(map[string]models.NamedTensor, len(ts))
		for k, t := range ts {
			if n := models.WanKey(k); n != "" {
				wan[n] = t
			}
		}
		ts = wan
	}
	shape := func(k string, rank int) ([]int, error) {
		t, ok := ts[k]
		if !ok || len(t.Shape) != rank {
			return nil, fmt.Errorf("no %d-d tensor %s to read the architecture from (give --model-config)", rank, k)
		}
		return t.Shape, nil
	}
	c := models.Config{Eps: 1e-6, TextLen: textLen}
	pe, err := shape("patch_embedding.weight", 5)
	if err != nil {
		return c, err
	}
	c.Dim, c.InDim = pe[0], pe[1]
	te, err := shape("text_embedding.0.weight", 2)
	if err != nil {
		return c, err
	}
	c.TextDim = te[1]
	tm, err := shape("time_embedding.0.weight", 2)
	if err != nil {
		return c, err
	}
	c.FreqDim = tm[1]
	ff, err := shape("blocks.0.ffn.0.weight", 2)
	if err != nil {
		return c, err
	}
	c.FFNDim = ff[0]
	hh, err := shape("head.head.weight", 2)
	if err != nil {
		return c, err
	}
	c.OutDim = hh[0] / 4
	for ; ; c.Layers++ {
		if _, ok := ts[fmt.Sprintf("blocks.%d.modulation", c.Layers)]; !ok {
			break
		}
	}
	c.Heads = heads
	if c.Heads == 0 {
		for _, n := range models.PresetNames {
			if p, _ := models.Preset(n); p.Dim == c.Dim {
				c.Heads = p.Heads
			}
		}
	}
	if c.Heads == 0 {
		return c, fmt.Errorf("width %d matches no preset: give --heads or --model-config", c.Dim)
	}
	if c.TextLen <= 0 {
		c.TextLen = 512
	}
	return c, c.Validate()
}

// NormStats is the per-channel normalisation of the job's data for C channels (nil, nil = none).
func NormStats(job *config.Job, C int) ([]float64, []float64) {
	switch job.Data.Normalize {
	case "wan":
		if C == len(config.WanMean) {
			return config.WanMean, config.WanStd
		}
	case "custom":
		return job.Data.Mean, job.Data.Std
	}
	return nil, nil
}

func fileExists(p string) bool { st, err := os.Stat(p); return err == nil && !st.IsDir() }
