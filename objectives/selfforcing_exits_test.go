package objectives

import (
	"math/rand/v2"
	"testing"
)

// With same_step_across_chunks false every chunk draws its exit level on its own (Self-Forcing's
// per-chunk variant): over 4000 draws of 5 chunks on the 4-level list, every chunk's exit is
// uniform (each level 25% ± 5%) and every pair of chunks agrees as often as independent draws do
// (25% ± 5%; the binomial standard error is 0.7%). With it true, all chunks share one draw.
func TestSelfForcingExitsIndependentPerChunk(t *testing.T) {
	for _, same := range []bool{false, true} {
		o, err := New("selfforcing", map[string]any{"same_step_across_chunks": same})
		if err != nil {
			t.Fatal(err)
		}
		sf := o.(*SelfForcing)
		const chunks, draws = 5, 4000
		sf.exits = make([]int, chunks)
		n := len(sf.sigmas)
		if n != 4 {
			t.Fatalf("default list has %d levels, the test assumes 4", n)
		}
		rng := rand.New(rand.NewPCG(17, 1))
		var level [chunks][4]int
		var agree [chunks][chunks]int
		for k := 0; k < draws; k++ {
			ex := sf.drawExits(rng)
			for i := 0; i < chunks; i++ {
				level[i][ex[i]]++
				for j := i + 1; j < chunks; j++ {
					if ex[i] == ex[j] {
						agree[i][j]++
					}
				}
			}
		}
		for i := 0; i < chunks; i++ {
			for l := 0; l < n; l++ {
				if f := float64(level[i][l]) / draws; f < 0.20 || f > 0.30 {
					t.Errorf("same %v: chunk %d exits at level %d in %.3f of the draws, want 0.25", same, i, l, f)
				}
			}
			for j := i + 1; j < chunks; j++ {
				f := float64(agree[i][j]) / draws
				if same && f != 1 {
					t.Errorf("same %v: chunks %d and %d share the exit in %.3f of the draws, want all", same, i, j, f)
				}
				if !same && (f < 0.20 || f > 0.30) {
					t.Errorf("same %v: chunks %d and %d share the exit in %.3f of the draws, want 0.25 (independent)", same, i, j, f)
				}
			}
		}
	}
}
