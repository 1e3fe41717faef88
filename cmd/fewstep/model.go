package main

import (
	"fmt"
	"slices"

	"github.com/fewstep/fewstep/pipeline"
	"strconv"
	"time"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/spf13/cobra"
)

// `fewstep model forward|vjp`: run a checkpoint on given inputs and write the output (and the
// vector-Jacobian product) — the tool a user ports or debugs a checkpoint with.

var modelCmd = &cobra.Command{
	Use:   "model",
	Short: "Run a Wan2.1-layout checkpoint on given inputs: forward, or forward + vector-Jacobian product",
}

var modelForwardCmd = &cobra.Command{
	Use:   "forward",
	Short: "Write the model's output, out [B,C,F,H,W], for inputs x, t, context",
	Long: `Loads a checkpoint (--weights, Wan2.1 key layout, F32/BF16/F16 safetensors) with its
architecture (--model-config Wan config.json, or --preset), reads --inputs (safetensors:
x [B,C,F,H,W], t [B,F] timesteps in [0,1000], context [B,L,text_dim]) and writes --out
(safetensors F32: out). As Wan2.1's WanModel does, a context of L < text_len tokens is zero-padded
to text_len and the network attends to the padding (L > text_len is an error).`,
	RunE: func(cmd *cobra.Command, args []string) error { return runModel(cmd, false) },
}

var modelVJPCmd = &cobra.Command{
	Use:   "vjp",
	Short: "Write out, grad.x and grad.<param> for every parameter, for a cotangent on the output",
	Long: `Like forward, and --inputs also holds cotangent (shaped like the output). Writes out,
grad.x = (∂out/∂x)ᵀ·cotangent and grad.<key> = (∂out/∂key)ᵀ·cotangent for every parameter key.`,
	RunE: func(cmd *cobra.Command, args []string) error { return runModel(cmd, true) },
}

func init() {
	for _, c := range []*cobra.Command{modelForwardCmd, modelVJPCmd} {
		f := c.Flags()
		f.String("weights", "", "checkpoint, safetensors in Wan2.1's key layout (required)")
		f.String("model-config", "", "Wan2.1 config.json of the checkpoint (or --preset)")
		f.String("preset", "", "architecture preset: "+fmt.Sprint(models.PresetNames))
		f.String("inputs", "", "safetensors with x, t, context (and cotangent for vjp) (required)")
		f.Bool("causal", false, "block-causal self-attention (the causal student); chunks of --chunk-frames")
		f.Int("chunk-frames", 0, "latent frames per causal chunk (implies --causal; default 3 with --causal)")
		f.String("device", "cpu", "cpu, cuda or cuda:N")
		f.String("out", "", "output safetensors (required)")
		modelCmd.AddCommand(c)
	}
	rootCmd.AddCommand(modelCmd)
}

// modelConfig resolves --model-config / --preset.
func modelConfig(cmd *cobra.Command) (models.Config, error) {
	cfgPath, _ := cmd.Flags().GetString("model-config")
	preset, _ := cmd.Flags().GetString("preset")
	switch {
	case cfgPath != "" && preset != "":
		return models.Config{}, fmt.Errorf("give --model-config or --preset, not both")
	case cfgPath != "":
		return models.ReadWanConfig(cfgPath)
	case preset != "":
		return models.Preset(preset)
	}
	return models.Config{}, fmt.Errorf("the architecture is needed: --model-config config.json or --preset")
}

func runModel(cmd *cobra.Command, vjp bool) error {
	fl := cmd.Flags()
	weights, _ := fl.GetString("weights")
	inPath, _ := fl.GetString("inputs")
	outPath, _ := fl.GetString("out")
	devName, _ := fl.GetString("device")
	causal, _ := fl.GetBool("causal")
	chunk, _ := fl.GetInt("chunk-frames")
	for _, r := range [][2]string{{"weights", weights}, {"inputs", inPath}, {"out", outPath}} {
		if r[1] == "" {
			return fmt.Errorf("model %s: --%s is required", cmd.Name(), r[0])
		}
	}
	if chunk < 0 {
		return fmt.Errorf("model %s: --chunk-frames %d must be ≥ 0", cmd.Name(), chunk)
	}
	if causal && chunk == 0 {
		chunk = 3
	}
	cfg, err := modelConfig(cmd)
	if err != nil {
		return fmt.Errorf("model %s: %w", cmd.Name(), err)
	}
	dev, err := pipeline.OpenBackend(devName)
	if err != nil {
		return fmt.Errorf("model %s: %w", cmd.Name(), err)
	}
	m := models.New(dev, cfg, vjp)
	if err := m.Load(weights); err != nil {
		return err
	}
	in, _, err := models.ReadSafetensors(inPath)
	if err != nil {
		return err
	}
	need := []string{"x", "t", "context"}
	if vjp {
		need = append(need, "cotangent")
	}
	for _, k := range need {
		if _, ok := in[k]; !ok {
			return fmt.Errorf("model %s: inputs %s: no tensor %q (want x [B,C,F,H,W], t [B,F], context [B,L,text_dim]%s)",
				cmd.Name(), inPath, k, map[bool]string{true: ", cotangent [B,C,F,H,W]"}[vjp])
		}
	}
	x, t, ctx := in["x"], in["t"], in["context"]
	if len(x.Shape) != 5 || x.Shape[1] != cfg.InDim {
		return fmt.Errorf("model %s: inputs %s: x has shape %v, want [B, %d, F, H, W]", cmd.Name(), inPath, x.Shape, cfg.InDim)
	}
	B, F, H, W := x.Shape[0], x.Shape[2], x.Shape[3], x.Shape[4]
	if len(t.Shape) != 2 || t.Shape[0] != B || t.Shape[1] != F {
		return fmt.Errorf("model %s: inputs %s: t has shape %v, want [%d, %d] (one timestep per frame)", cmd.Name(), inPath, t.Shape, B, F)
	}
	if len(ctx.Shape) != 3 || ctx.Shape[0] != B || ctx.Shape[2] != cfg.TextDim {
		return fmt.Errorf("model %s: inputs %s: context has shape %v, want [%d, L, %d]", cmd.Name(), inPath, ctx.Shape, B, cfg.TextDim)
	}
	L := ctx.Shape[1]
	if L > cfg.TextLen {
		return fmt.Errorf("model %s: inputs %s: context has %d tokens, more than the model's text_len %d", cmd.Name(), inPath, L, cfg.TextLen)
	}
	padded, err := models.PadContext(ctx.Data, B, L, cfg.TextDim, cfg.TextLen) // Wan: zero-pad to text_len
	if err != nil {
		return fmt.Errorf("model %s: inputs %s: %w", cmd.Name(), inPath, err)
	}
	ctxIn := models.NamedTensor{Name: "context", Shape: []int{B, cfg.TextLen, cfg.TextDim}, Data: padded} // [B, text_len, text_dim]
	s := models.Shape{B: B, F: F, H: H, W: W, L: cfg.TextLen, ChunkFrames: chunk}
	if err := s.Check(cfg); err != nil {
		return fmt.Errorf("model %s: inputs %s: %w", cmd.Name(), inPath, err)
	}
	outShape := []int{B, cfg.OutDim, F, H, W}
	var cot models.NamedTensor
	if vjp {
		cot = in["cotangent"]
		if !slices.Equal(cot.Shape, outShape) {
			return fmt.Errorf("model %s: inputs %s: cotangent has shape %v, want the output's %v", cmd.Name(), inPath, cot.Shape, outShape)
		}
	}

	upload := func(nt models.NamedTensor) *kernels.Tensor {
		d := dev.Alloc(kernels.F32, nt.Shape...)
		dev.FromHost(d, nt.Data)
		return d
	}
	start := time.Now()
	p := m.NewPass(s)
	out := m.Forward(p, upload(x), upload(t), upload(ctxIn))
	res := []models.NamedTensor{{Name: "out", Shape: outShape, Data: make([]float32, out.Numel())}}
	dev.ToHost(res[0].Data, out)
	if vjp {
		m.ZeroGrad()
		dx := m.Backward(p, upload(cot))
		gx := models.NamedTensor{Name: "grad.x", Shape: x.Shape, Data: make([]float32, dx.Numel())}
		dev.ToHost(gx.Data, dx)
		res = append(res, gx)
		res = append(res, m.Tensors(m.G, "grad.")...)
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("model %s: device: %w", cmd.Name(), err)
	}
	el := time.Since(start)
	meta := map[string]string{"command": "model " + cmd.Name(), "weights": weights, "device": dev.Name(),
		"chunk_frames": strconv.Itoa(chunk), "dim": strconv.Itoa(cfg.Dim), "num_layers": strconv.Itoa(cfg.Layers)}
	if err := models.WriteSafetensors(outPath, res, kernels.F32, meta); err != nil {
		return err
	}
	mode := "bidirectional"
	if chunk > 0 {
		mode = fmt.Sprintf("block-causal, %d frames per chunk", chunk)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "model %s: x %v, t %v, context %v, %s, %s → %s (%d tensors) in %v\n",
		cmd.Name(), x.Shape, t.Shape, ctx.Shape, mode, dev.Name(), outPath, len(res), el.Round(time.Millisecond))
	return nil
}
