package data

import (
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// writeODEPairs writes n rows of ODE pairs (latent [C,F,H,W], text [2,4], trajectory [S,C,F,H,W] at
// times) in the layout of `fewstep data ode-pairs`; row i's trajectory is values[i]. mutate may
// change row i's trajectory shape and timesteps before writing.
func writeODEPairs(t *testing.T, path string, n, S int, lat []int, dt kernels.DType, mutate func(i int, shape []int, times []float32) ([]int, []float32)) [][]float32 {
	t.Helper()
	w, err := NewWriter(path, []string{Latent, TextEmb, TrajLatent, TrajTimes}, 3)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(uint64(n), uint64(S)))
	per := kernels.Numel(lat)
	var values [][]float32
	for i := 0; i < n; i++ {
		x0, text := make([]float32, per), make([]float32, 8)
		shape := append([]int{S}, lat...)
		times := []float32{1000, 750, 500, 250, 0}[5-S:]
		if mutate != nil {
			shape, times = mutate(i, shape, times)
		}
		traj := make([]float32, kernels.Numel(shape))
		for j := range traj {
			traj[j] = float32(r.NormFloat64())
		}
		if dt == kernels.BF16 { // what the file can hold
			for j := range traj {
				traj[j] = BF16ToF32(BF16(traj[j]))
			}
		}
		values = append(values, traj)
		if err := w.Append("r"+string(rune('a'+i)), "a caption",
			F32Tensor(Latent, lat, x0, kernels.F32), F32Tensor(TextEmb, []int{2, 4}, text, kernels.F32),
			F32Tensor(TrajLatent, shape, traj, dt), F32Tensor(TrajTimes, []int{len(times)}, times, kernels.F32)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return values
}

// A dataset with trajectory columns loads them (bf16 and f32, Arrow and Parquet) into
// Batch.TrajLatents [B, S, C, F, H, W], row for row, with the timesteps, un-normalized.
func TestLoaderTrajectories(t *testing.T) {
	lat := []int{3, 2, 2, 2}
	for _, c := range []struct {
		ext string
		dt  kernels.DType
	}{{"arrow", kernels.F32}, {"parquet", kernels.BF16}} {
		path := filepath.Join(t.TempDir(), "pairs."+c.ext)
		vals := writeODEPairs(t, path, 6, 5, lat, c.dt, nil)
		ds, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		l, err := NewLoader(ds, LoaderConfig{BatchSize: 3, TextLen: 4, NoShuffle: true, Dev: kernels.CPU(),
			Mean: []float64{1, 2, 3}, Std: []float64{2, 2, 2}})
		if err != nil {
			t.Fatal(err)
		}
		for k := 0; k < 2; k++ {
			b, err := l.Next()
			if err != nil {
				t.Fatal(err)
			}
			if want := []int{3, 5, 3, 2, 2, 2}; !slices.Equal(b.TrajLatents.Shape, want) {
				t.Fatalf("%s: TrajLatents %v, want %v", c.ext, b.TrajLatents.Shape, want)
			}
			if want := []float32{1000, 750, 500, 250, 0}; !slices.Equal(b.TrajTimesteps, want) {
				t.Fatalf("%s: timesteps %v, want %v", c.ext, b.TrajTimesteps, want)
			}
			per := len(vals[0])
			for j, row := range b.Rows {
				if !slices.Equal(b.TrajLatents.F32[j*per:(j+1)*per], vals[row]) {
					t.Fatalf("%s: batch %d sample %d (row %d): trajectory differs from the file", c.ext, k, j, row)
				}
			}
		}
		l.Close()
		ds.Close()
	}
}

// Trajectories that disagree with the latents or with each other fail at NewLoader, naming the
// file, the row and the column.
func TestLoaderTrajectoryErrors(t *testing.T) {
	lat := []int{3, 2, 2, 2}
	for _, c := range []struct {
		name, want string
		mutate     func(i int, shape []int, times []float32) ([]int, []float32)
	}{
		{"latent shape", "trajectory_latents_shape", func(i int, s []int, ts []float32) ([]int, []float32) {
			if i == 2 {
				s = []int{5, 3, 2, 2, 1}
			}
			return s, ts
		}},
		{"timestep count", "trajectory_timesteps_shape", func(i int, s []int, ts []float32) ([]int, []float32) {
			if i == 3 {
				ts = ts[:4]
			}
			return s, ts
		}},
		{"timesteps", "trajectory_timesteps_bytes", func(i int, s []int, ts []float32) ([]int, []float32) {
			if i == 1 {
				ts = []float32{1000, 700, 500, 250, 0}
			}
			return s, ts
		}},
	} {
		path := filepath.Join(t.TempDir(), "bad.arrow")
		writeODEPairs(t, path, 4, 5, lat, kernels.F32, c.mutate)
		ds, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = NewLoader(ds, LoaderConfig{BatchSize: 2, TextLen: 4, Dev: kernels.CPU()})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "row ") {
			t.Fatalf("%s: error %v, want one naming %s, the file and the row", c.name, err, c.want)
		}
		ds.Close()
	}
}
