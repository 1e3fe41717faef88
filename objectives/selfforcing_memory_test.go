package objectives

import (
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// TestSelfForcingMemoryScaling: the bytes a Self-Forcing step holds, counted on models.DryDevice
// (what the CUDA device would hold, by who allocated it) for videos of 2, 3 and 4 chunks. Exact
// counts from the design: the rollout's passes are one inference and one training pass of one chunk,
// whatever the number of chunks (the graded steps are replayed, not kept); the KV cache holds the
// (chunks−1)·k frames a rollout commits; the gathers are one K/V pair (inference pass) and K, V, dK,
// dV (training pass) of the whole video's tokens (the most a chunk attends to). Logs the peak.
func TestSelfForcingMemoryScaling(t *testing.T) {
	cfg, _ := models.Preset("tiny")
	cfg.Layers = 3
	k, H, W := 2, 4, 4
	hw := (H / 2) * (W / 2)
	var rollout int64
	for _, chunks := range []int{2, 3, 4} {
		d := models.NewDryDevice()
		s := models.Shape{B: 1, F: chunks * k, H: H, W: W, L: 3, ChunkFrames: k, Recompute: true}
		o, err := New("selfforcing", map[string]any{"generator_update_ratio": 1, "kv_cache_dtype": "bf16"})
		if err != nil {
			t.Fatal(err)
		}
		env := &Env{Dev: d, Cfg: cfg, Shape: s, Roles: map[string]*Role{}}
		for _, sp := range o.Roles() {
			r := &Role{Spec: sp, Net: models.New(d, cfg, sp.Trainable)}
			r.W, r.G, r.Table = r.Net.W, r.Net.G, r.Net.Table
			env.Roles[sp.Name] = r
		}
		if err := o.Setup(env); err != nil {
			t.Fatal(err)
		}
		b := &Batch{X0: d.Alloc(kernels.F32, 1, cfg.InDim, s.F, H, W), Ctx: d.Alloc(kernels.F32, 1, s.L, cfg.TextDim),
			Null: d.Alloc(kernels.F32, 1, s.L, cfg.TextDim), Drop: []bool{false}}
		for step := 1; step <= 2; step++ {
			if _, err := o.Step(&Step{Step: step, Accum: 1, RNG: StepRNG(1, step, 0)}, b); err != nil {
				t.Fatal(err)
			}
		}
		got := map[string]int64{}
		for _, it := range d.Labels(true) {
			switch l := it.Label; {
			case strings.HasPrefix(l, "objectives.NewCausalRollout → models.(*Pass)"):
				got["passes"] += it.Bytes
			case strings.Contains(l, "→ models.(*Cache).grow"):
				got["cache"] += it.Bytes
			case !strings.HasPrefix(l, "bf16") && strings.Contains(l, "→ models.(*DiT).prepareChunk"):
				got["gathers"] += it.Bytes
			}
		}
		if chunks == 2 {
			rollout = got["passes"]
		}
		if got["passes"] != rollout || rollout == 0 {
			t.Errorf("%d chunks: the rollout's passes hold %d bytes, %d at 2 chunks: want the same", chunks, got["passes"], rollout)
		}
		if want := int64(2 * cfg.Layers * (chunks - 1) * k * hw * cfg.Dim * 2); got["cache"] != want {
			t.Errorf("%d chunks: KV cache %d bytes, want %d ((chunks−1)·k frames of bf16 K and V)", chunks, got["cache"], want)
		}
		if want := int64(6 * s.F * hw * cfg.Dim * 4); got["gathers"] != want {
			t.Errorf("%d chunks: gathers %d bytes, want %d (6 fp32 buffers of the video's tokens)", chunks, got["gathers"], want)
		}
		t.Logf("%d chunks: peak %d bytes; rollout passes %d, cache %d, gathers %d", chunks, d.Peak(), got["passes"], got["cache"], got["gathers"])
	}
}
