package objectives_test

// The objectives on the GPU follow the CPU: the same job (tiny preset, the modes data of
// train_test.go, a random teacher) trained k steps on the CPU and on the CUDA device, with the same
// step RNG, data and initial weights. Compared per objective: every logged loss and gradient norm at
// every step, and each trainable role's weight change after k steps, Δw = w_k − w_0,
// as ‖Δw_gpu − Δw_cpu‖ / ‖Δw_cpu‖. The scale that error is judged against: the same CPU run with
// another seed (other noise, σ and exit steps), whose Δw differs from the first by `seed` (≈ 1).
// Two GPU precisions: fp32 GEMMs (GEMMExact: the GPU's arithmetic must match the CPU's closely) and
// the training precision, bf16 GEMM operands with fp32 accumulation (GEMMBF16: bf16 tolerance).
// The noise is drawn on the host on both devices (train.noise host, the CPU-equal draws), except
// in dmd-device-noise (train.noise device on both: Philox on each device, equal to the last bit of
// a double log/sincos). Skips without a GPU.

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
	"github.com/fewstep/fewstep/trainer"
)

const gpuSteps = 6

type gpuRun struct {
	metrics []map[string]float64 // per step
	w0, w   map[string][]float32 // trainable roles' weights before and after
	roles   []string             // trainable roles
}

func trainOn(t *testing.T, dev kernels.Device, job *config.Job, m *modes, s models.Shape) gpuRun {
	t.Helper()
	if job.Train.Noise == "" || job.Train.Noise == objectives.NoiseAuto {
		job.Train.Noise = objectives.NoiseHost // the CPU-equal draws on both devices (train.noise)
	}
	tr, err := trainer.New(trainer.Options{Job: job, Dev: dev, Model: m.cfg, Shape: s,
		Null: make([]float32, mL*m.cfg.TextDim), Source: &source{m: m, noDrop: job.Objective != "flowmatch"}})
	if err != nil {
		t.Fatal(err)
	}
	var r gpuRun
	for name := range job.Roles {
		if n := tr.Net(name); n != nil && n.G != nil {
			r.roles = append(r.roles, name)
		}
	}
	sort.Strings(r.roles)
	snap := func() map[string][]float32 {
		w := map[string][]float32{}
		for _, name := range r.roles {
			n := tr.Net(name)
			h := make([]float32, n.W.Numel())
			dev.ToHost(h, n.W)
			w[name] = h
		}
		return w
	}
	r.w0 = snap()
	for tr.Step < gpuSteps {
		mt, err := tr.TrainStep()
		if err != nil {
			t.Fatal(err)
		}
		r.metrics = append(r.metrics, mt)
	}
	if g, ok := dev.(*cuda.Device); ok {
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	r.w = snap()
	return r
}

// deltaErr is ‖(a−a0) − (b−b0)‖ / ‖b−b0‖.
func deltaErr(a, a0, b, b0 []float32) float64 {
	var num, den float64
	for i := range a {
		da, db := float64(a[i]-a0[i]), float64(b[i]-b0[i])
		num += (da - db) * (da - db)
		den += db * db
	}
	return math.Sqrt(num / den)
}

// randomTeacher writes a tiny teacher with Wan's init and a random (non-zero) output head, so that
// gradients reach every layer from the first step.
func randomTeacher(t *testing.T, cfg models.Config) string {
	te := models.New(kernels.CPU(), cfg, false)
	te.Init(3)
	head := te.Param("head.head.weight")
	r := rand.New(rand.NewPCG(4, 5))
	for i := range head.F32 {
		head.F32[i] = float32(0.05 * r.NormFloat64())
	}
	path := filepath.Join(t.TempDir(), "teacher.safetensors")
	if err := te.Save(path, kernels.F32); err != nil {
		t.Fatal(err)
	}
	return path
}

// relDiffs is, per logged key (losses, gradient norms; not lr or the exit step), the RMS over the
// steps of |a − b| / max(|b|, 1e-6).
func relDiffs(a, b []map[string]float64) map[string]float64 {
	sum, n := map[string]float64{}, map[string]int{}
	for i := range b {
		for k, want := range b[i] {
			if strings.HasPrefix(k, "lr/") || k == "exit" {
				continue
			}
			got, ok := a[i][k]
			e := math.Abs(got-want) / math.Max(math.Abs(want), 1e-6)
			if !ok || math.IsNaN(e) {
				e = math.Inf(1)
			}
			sum[k] += e * e
			n[k]++
		}
	}
	for k := range sum {
		sum[k] = math.Sqrt(sum[k] / float64(n[k]))
	}
	return sum
}

func sortedKeys(m map[string]float64) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestGPUTrainingFollowsCPU(t *testing.T) {
	g, err := cuda.New(0)
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	t.Logf("GPU: %s", g.Info)
	for _, heads := range []int{2, 1} { // head dim 32 (reference attention kernels), 64 (fused attention)
		cfg := tinyCfg(t)
		cfg.Heads = heads
		m := newModes(cfg)
		teacher := randomTeacher(t, m.cfg)
		t.Run("hd"+strconv.Itoa(cfg.HeadDim()), func(t *testing.T) { followsCPU(t, g, m, teacher, heads == 2) })
	}
}

// followsCPU trains every case on the CPU (twice: the job's seed and another) and on g, and compares.
// all: every objective (else flowmatch and dmd only).
func followsCPU(t *testing.T, g *cuda.Device, m *modes, teacher string, all bool) {
	shape := models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL}
	dmdJob := func(dir, noise string) *config.Job { // noise "": the test's host draws (trainOn)
		j := baseJob(dir, "dmd", gpuSteps)
		if noise != "" {
			j.Train.Noise = noise
		}
		j.Params = map[string]any{"cfg": 2, "generator_update_ratio": 1}
		j.Roles["teacher"] = config.Role{Weights: teacher}
		j.Roles["student"] = adam(1e-3, 0, 0.999)
		j.Roles["critic"] = adam(1e-3, 0, 0.999)
		return j
	}
	cases := []struct {
		name  string
		job   func(dir string) *config.Job
		shape models.Shape
	}{
		{"flowmatch", func(dir string) *config.Job {
			j := baseJob(dir, "flowmatch", gpuSteps)
			j.Roles["student"] = adam(1e-3)
			return j
		}, shape},
		{"dmd", func(dir string) *config.Job { return dmdJob(dir, "") }, shape},
		{"dmd-device-noise", func(dir string) *config.Job { // train.noise device on both: the GPU's Philox draws are the CPU's
			return dmdJob(dir, objectives.NoiseDevice)
		}, shape},
		{"consistency", func(dir string) *config.Job {
			j := baseJob(dir, "consistency", gpuSteps)
			j.Params = map[string]any{"grid_n": 20, "skip": 2, "loss": "l2", "cfg": 1.5}
			j.Roles["teacher"] = config.Role{Weights: teacher}
			st := adam(1e-3)
			st.EMADecay = 0.95
			j.Roles["student"] = st
			return j
		}, shape},
		{"adversarial", func(dir string) *config.Job {
			j := baseJob(dir, "adversarial", gpuSteps)
			j.Params = map[string]any{"mode": "dmd2", "denoising_timesteps": []any{1000}, "cfg": 1.5,
				"generator_update_ratio": 1, "gen_gan_weight": 0.05, "disc_gan_weight": 0.1}
			j.Roles["teacher"] = config.Role{Weights: teacher}
			j.Roles["student"] = adam(1e-3, 0, 0.999)
			j.Roles["critic"] = adam(1e-3, 0, 0.999)
			j.Roles["discriminator"] = adam(1e-3, 0, 0.999)
			return j
		}, shape},
		{"selfforcing", func(dir string) *config.Job {
			j := baseJob(dir, "selfforcing", gpuSteps)
			j.Params = map[string]any{"shift": 1, "cfg": 1.5, "generator_update_ratio": 1}
			j.Roles["teacher"] = config.Role{Weights: teacher}
			j.Roles["student"] = adam(1e-3, 0, 0.999)
			j.Roles["critic"] = adam(1e-3, 0, 0.999)
			return j
		}, models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL, ChunkFrames: 1}},
	}
	precisions := []struct {
		name string
		gemm cuda.GEMMMode
		// fp32: every logged value within lossTol (relative) and Δw within wTol of the CPU's.
		// bf16: every logged value within lossTol, or its difference from the CPU's at most a quarter
		// of the other seed's; Δw within wTol × the other seed's Δw difference.
		lossTol, wTol float64
		exact         bool
	}{
		{"fp32 GEMMs", cuda.GEMMExact, 5e-3, 0.05, true},
		{"bf16 GEMMs", cuda.GEMMBF16, 0.05, 0.5, false},
	}
	if m.cfg.HeadDim() != 32 { // the fused attention computes in bf16 in either mode
		precisions[0].lossTol, precisions[0].wTol, precisions[0].exact = 0.05, 0.5, false
	}
	for _, c := range cases {
		if !all && c.name != "flowmatch" && c.name != "dmd" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			cpu := trainOn(t, kernels.CPU(), c.job(t.TempDir()), m, c.shape)
			other := c.job(t.TempDir())
			other.Seed += 1000
			ref := trainOn(t, kernels.CPU(), other, m, c.shape)
			seedScale := map[string]float64{}
			for _, role := range cpu.roles {
				seedScale[role] = deltaErr(ref.w[role], ref.w0[role], cpu.w[role], cpu.w0[role])
			}
			seedDiff := relDiffs(ref.metrics, cpu.metrics)
			for _, pr := range precisions {
				g.GEMM = pr.gemm
				gpu := trainOn(t, g, c.job(t.TempDir()), m, c.shape)
				diff := relDiffs(gpu.metrics, cpu.metrics)
				var line []string
				for _, k := range sortedKeys(diff) {
					line = append(line, k+" "+fmtG(diff[k])+" (seed "+fmtG(seedDiff[k])+")")
					ok := diff[k] <= pr.lossTol || (!pr.exact && diff[k] <= seedDiff[k]/4)
					if !ok {
						t.Errorf("%s, %s: logged %s differs from the CPU's by %.3g RMS relative (tolerance %.g; another seed: %.3g)",
							c.name, pr.name, k, diff[k], pr.lossTol, seedDiff[k])
					}
				}
				t.Logf("%s, %s, %d steps: RMS relative difference GPU vs CPU per logged value: %s", c.name, pr.name, gpuSteps, strings.Join(line, ", "))
				var curve []string
				for i := range cpu.metrics {
					curve = append(curve, fmtG(cpu.metrics[i]["loss"])+"/"+fmtG(gpu.metrics[i]["loss"]))
				}
				t.Logf("  loss per step, CPU/GPU: %s", strings.Join(curve, " "))
				for _, role := range cpu.roles {
					e := deltaErr(gpu.w[role], gpu.w0[role], cpu.w[role], cpu.w0[role])
					zero := make([]float32, len(cpu.w0[role]))
					w0e := deltaErr(gpu.w0[role], zero, cpu.w0[role], zero) // initial weights, relative
					wk := deltaErr(gpu.w[role], zero, cpu.w[role], zero)
					t.Logf("  %s: Δw after %d steps, GPU vs CPU %.2e (another seed on the CPU: %.2e); weights %.1e (initial %.1e)",
						role, gpuSteps, e, seedScale[role], wk, w0e)
					lim := pr.wTol
					if !pr.exact {
						lim = pr.wTol * seedScale[role]
					}
					if !(e <= lim) {
						t.Errorf("%s, %s: %s's Δw differs from the CPU's by %.3g (tolerance %.3g; another seed %.3g)",
							c.name, pr.name, role, e, lim, seedScale[role])
					}
				}
			}
		})
	}
}

func fmtG(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }
