package trainer

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// pipeDev logs, in order, the calls through it that wait for the device ("sync": ToHost, Dot,
// SumAbsGroups, Sync) and the asynchronous readbacks ("read k" when started, "wait k" when waited
// for; k counts from 1).
type pipeDev struct {
	kernels.Device
	log *[]string
}

func (d pipeDev) ToHost(dst []float32, src *kernels.Tensor) {
	*d.log = append(*d.log, "sync")
	d.Device.ToHost(dst, src)
}
func (d pipeDev) Dot(a, b *kernels.Tensor) float64 {
	*d.log = append(*d.log, "sync")
	return d.Device.Dot(a, b)
}
func (d pipeDev) SumAbsGroups(dst []float64, x *kernels.Tensor) {
	*d.log = append(*d.log, "sync")
	d.Device.SumAbsGroups(dst, x)
}
func (d pipeDev) Sync() error { *d.log = append(*d.log, "sync"); return d.Device.Sync() }
func (d pipeDev) ReadAsync(src *kernels.Tensor) kernels.Readback {
	k := 1
	for _, e := range *d.log {
		if strings.HasPrefix(e, "read") {
			k++
		}
	}
	*d.log = append(*d.log, fmt.Sprintf("read %d", k))
	return pipeReadback{d.Device.ReadAsync(src), d.log, k}
}

type pipeReadback struct {
	kernels.Readback
	log *[]string
	k   int
}

func (r pipeReadback) Wait(dst []float32) error {
	*r.log = append(*r.log, fmt.Sprintf("wait %d", r.k))
	return r.Readback.Wait(dst)
}

// TestRunPipelined: in Run, no step waits for the device it just fed: through the trainer's
// device, steps 1…N make no synchronizing call, and the only waits are each step's readback,
// taken after the next step is launched (read n+1 before wait n); the last step, which
// checkpoints, settles at once. metrics.jsonl still has every step's losses, gradient norms and
// learning rates, the values a TrainStep-per-step run of the same job returns, and the weights
// (and EMA) end bit for bit the same. Flowmatch (its loss deferred; the device wrapped for the
// objective too: it syncs nothing of its own) and the toy objective (EMA; its loss read at once
// by the objective on the unwrapped device).
func TestRunPipelined(t *testing.T) {
	const N = 6
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	build := func(obj, dir string, log *[]string) *Trainer {
		var job *config.Job
		var opt Options
		dev := kernels.NewCPU(1) // one thread: Dot's float64 sum is the same from run to run
		if obj == "flowmatch" {
			job = dpJob(obj, dir, N)
			opt = Options{Job: job, Dev: dev, Model: cfg, Shape: models.Shape{B: 2, F: dpF, H: dpH, W: dpW, L: dpL},
				Null: make([]float32, dpL*cfg.TextDim), RandomInit: true, Source: &globalSource{rank: 0, world: 1, B: 2, cfg: cfg}}
			if log != nil {
				opt.Dev = pipeDev{dev, log}
			}
		} else {
			job = toyJob(dir, N)
			job.Train.ClipNorm = 0.5 // clips
			opt = Options{Job: job, Dev: dev, Model: models.Config{InDim: tC, TextDim: tD},
				Shape: models.Shape{B: tB, F: 1, H: 1, W: 1, L: tL}, Null: make([]float32, tL*tD), Source: newToySource()}
		}
		tr, err := New(opt)
		if err != nil {
			t.Fatal(err)
		}
		if log != nil {
			tr.opt.Dev = pipeDev{dev, log}
		}
		return tr
	}
	for _, obj := range []string{"flowmatch", "test-toy"} {
		var log []string
		dir := t.TempDir()
		run := build(obj, dir, &log)
		if err := run.Run(); err != nil {
			t.Fatal(err)
		}
		var want []string
		for n := 1; n <= N; n++ {
			want = append(want, fmt.Sprintf("read %d", n))
			if n > 1 {
				want = append(want, fmt.Sprintf("wait %d", n-1))
			}
		}
		want = append(want, fmt.Sprintf("wait %d", N))
		if len(log) < len(want) || strings.Join(log[:len(want)], ", ") != strings.Join(want, ", ") {
			t.Errorf("%s: the device calls of Run's steps:\n  %s\nwant (then the checkpoint's reads)\n  %s", obj, strings.Join(log, ", "), strings.Join(want, ", "))
		}

		ref := build(obj, t.TempDir(), nil)
		b, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != N {
			t.Fatalf("%s: metrics.jsonl has %d lines, want %d:\n%s", obj, len(lines), N, b)
		}
		for n := 1; n <= N; n++ {
			m, err := ref.TrainStep()
			if err != nil {
				t.Fatal(err)
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(lines[n-1]), &rec); err != nil {
				t.Fatal(err)
			}
			if rec["step"] != float64(n) || rec["bad_steps"] != float64(0) {
				t.Fatalf("%s: line %d: %s", obj, n, lines[n-1])
			}
			for _, k := range []string{"loss", "grad_norm/student", "lr/student"} {
				v, ok := m[k]
				got, _ := rec[k].(float64)
				if !ok || fmt.Sprintf("%.6g", got) != fmt.Sprintf("%.6g", v) {
					t.Errorf("%s step %d: metrics.jsonl %s = %v, TrainStep %v (%v)", obj, n, k, rec[k], v, ok)
				}
			}
		}
		if obj == "test-toy" && !(ref.byName[objectives.Student].gnorm > 0.5) {
			t.Errorf("toy: gradient norm %v does not reach the clip 0.5", ref.byName[objectives.Student].gnorm)
		}
		for _, r := range run.roles {
			a, b := hostOf(r.W), hostOf(ref.byName[r.Spec.Name].W)
			for i := range a {
				if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
					t.Fatalf("%s: %s weight %d: Run %v, TrainStep %v", obj, r.Spec.Name, i, a[i], b[i])
				}
			}
			if r.v != nil && r.updates != N {
				t.Errorf("%s: %s took %d AdamW steps, want %d", obj, r.Spec.Name, r.updates, N)
			}
		}
	}
}

// TestNonFiniteSkippedOnDevice: a planted NaN (nonfinite_test.go's nanSource: a NaN in step 4's
// context) is skipped by the device's gate before the host sees the step: right after step 4 is
// launched, unsettled, the weights, AdamW moments and EMA are bit for bit those before it and the
// device's step count has not moved. Settled, the step is counted bad. Step 5's update then uses
// AdamW step count 4 (not 5): it equals today's host path (Scale by the clip factor, AdamW at
// count 4, EMA) replayed here from the state before it and step 5's gradient, bit for bit, and
// differs from the same at count 5.
func TestNonFiniteSkippedOnDevice(t *testing.T) {
	job := toyJob(t.TempDir(), 8)
	job.Train.GradAccum = 1
	job.Train.MaxBadSteps = 1
	job.Train.ClipNorm = 0.3
	tr := newNaNToy(t, job, map[int]bool{3: true}) // batch 3 = step 4
	for tr.Step < 3 {
		if _, err := tr.TrainStep(); err != nil {
			t.Fatal(err)
		}
	}
	st, ema := tr.byName[objectives.Student], tr.byName[objectives.EMA]
	slot := tr.slot(st)
	count := func() int { return kernels.GateCount(hostOf(tr.gate), slot) }
	w, m, v, e := hostOf(st.W), hostOf(st.m), hostOf(st.v), hostOf(ema.W)
	if st.updates != 3 || count() != 3 {
		t.Fatalf("after 3 steps: %d AdamW steps on the host, %d on the device", st.updates, count())
	}
	same := func(when string, before []float32, x *kernels.Tensor, what string) {
		t.Helper()
		for i, b := range hostOf(x) {
			if math.Float32bits(b) != math.Float32bits(before[i]) {
				t.Fatalf("%s: %s[%d] = %v, want %v", when, what, i, b, before[i])
			}
		}
	}
	p, err := tr.launch()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what   string
		before []float32
		x      *kernels.Tensor
	}{{"W", w, st.W}, {"m", m, st.m}, {"v", v, st.v}, {"ema", e, ema.W}} {
		same("step 4 launched, not settled", c.before, c.x, c.what)
	}
	if count() != 3 {
		t.Fatalf("the skipped step moved the device's step count to %d", count())
	}
	if _, err := tr.Save(); err == nil || !strings.Contains(err.Error(), "not settled") {
		t.Fatalf("Save with step 4 in flight: %v, want a refusal", err)
	}
	met, err := tr.settle(p)
	if err != nil || !tr.skipped || tr.BadSteps != 1 || st.updates != 3 || !math.IsNaN(met["loss"]) {
		t.Fatalf("step 4 settled: %v, skipped %v, bad steps %d, updates %d, loss %v", err, tr.skipped, tr.BadSteps, st.updates, met["loss"])
	}

	met, err = tr.TrainStep() // step 5
	if err != nil || tr.skipped {
		t.Fatalf("step 5: %v (skipped %v)", err, tr.skipped)
	}
	if st.updates != 4 || count() != 4 {
		t.Fatalf("after step 5: %d AdamW steps on the host, %d on the device, want 4", st.updates, count())
	}
	gnorm := met["grad_norm/student"]
	if !(gnorm > job.Train.ClipNorm) {
		t.Fatalf("step 5's gradient norm %v does not reach the clip %v", gnorm, job.Train.ClipNorm)
	}
	// The replay: today's host path on copies of the state before step 5 (= before step 4).
	replay := func(t0 int) (wr, mr, vr, er []float32) {
		dev := kernels.NewCPU(1)
		put := func(h []float32) *kernels.Tensor { x := dev.Alloc(kernels.F32, len(h)); dev.FromHost(x, h); return x }
		W, M, V, E, G := put(w), put(m), put(v), put(e), put(hostOf(st.G)) // G: step 5's, unscaled by AdamWGated
		dev.Scale(G, float32(job.Train.ClipNorm/(gnorm+1e-6)))
		c := st.cfg
		lr := float32(lrAt(c.LR, c.Schedule, c.Warmup, 5, job.Train.Steps))
		for _, ru := range st.runs {
			wd := float32(0)
			if ru.Decay {
				wd = float32(c.WeightDecay)
			}
			dev.AdamW(W.View(ru.Off, ru.N), G.View(ru.Off, ru.N), M.View(ru.Off, ru.N), V.View(ru.Off, ru.N),
				lr, float32(c.Betas[0]), float32(c.Betas[1]), float32(c.Eps), wd, t0)
		}
		dev.EMA(E, W, float32(c.EMADecay)) // step 5 ≥ ema_start 3
		return hostOf(W), hostOf(M), hostOf(V), hostOf(E)
	}
	wr, mr, vr, er := replay(4)
	same("step 5 against the replay at count 4", wr, st.W, "W")
	same("step 5 against the replay at count 4", mr, st.m, "m")
	same("step 5 against the replay at count 4", vr, st.v, "v")
	same("step 5 against the replay at count 4", er, ema.W, "ema")
	w5, _, _, _ := replay(5)
	differs := false
	for i, x := range hostOf(st.W) {
		differs = differs || math.Float32bits(x) != math.Float32bits(w5[i])
	}
	if !differs {
		t.Fatal("the replay at count 5 gives the same weights: the test cannot tell the counts apart")
	}
}
