package trainer

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// TestSaveRefusesNonFiniteOnEveryRank: with a NaN in a weight, Save fails with ErrNonFinite on every
// rank of a data-parallel job, not only on rank 0, which writes (the others check the same weights,
// so that all stop together): with every rank holding the whole weights, a NaN at index 0 (the
// first element is checked too); with train.shard full, a NaN in rank 0's shard, which every rank
// gathers.
func TestSaveRefusesNonFiniteOnEveryRank(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	for _, shard := range []string{"none", "full"} {
		dir := t.TempDir()
		job := dpJob("flowmatch", dir, 1)
		job.Train.Shard = shard
		const world, B = 2, 1
		errs := make([]error, world)
		err := dist.Run(dist.Local(world), func(rank int, c dist.Comm) error {
			j := *job
			s := models.Shape{B: B, F: dpF, H: dpH, W: dpW, L: dpL}
			tr, err := New(Options{Job: &j, Dev: kernels.CPU(), Model: cfg, Shape: s, Null: make([]float32, dpL*cfg.TextDim),
				RandomInit: true, Comm: c, Source: &globalSource{rank: rank, world: world, B: B, cfg: cfg}})
			if err != nil {
				return err
			}
			st := tr.byName[objectives.Student]
			if st.Net != nil && st.Net.Sharded() { // a NaN in rank 0's shard of a block: every rank gathers it
				if rank == 0 {
					w := hostOf(st.W)
					i := 0 // the first element outside the replicated parts (which every rank holds alike)
					for _, o := range st.Net.Replicated() {
						if i >= o[0] && i < o[1] {
							i = o[1]
						}
					}
					w[i] = float32(math.NaN())
					tr.opt.Dev.FromHost(st.W, w)
				}
			} else {
				w := hostOf(st.W)
				w[0] = float32(math.NaN())
				tr.opt.Dev.FromHost(st.W, w)
			}
			_, errs[rank] = tr.Save()
			return nil
		})
		if err != nil {
			t.Fatalf("shard %s: %v", shard, err)
		}
		for rank, e := range errs {
			if !errors.Is(e, ErrNonFinite) {
				t.Errorf("shard %s: rank %d: Save of a NaN weight returned %v, want ErrNonFinite", shard, rank, e)
			}
		}
		if ents, _ := filepath.Glob(filepath.Join(dir, "checkpoints", "step-*")); len(ents) != 0 {
			t.Errorf("shard %s: a checkpoint was written: %v", shard, ents)
		}
		t.Log(fmt.Sprintf("shard %s: every rank refused: %v", shard, errs))
	}
}
