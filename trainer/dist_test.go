package trainer

// Data parallel and sharding on the in-process communicator (dist.Local): N ranks with batch B/N
// against one rank with batch B, for every objective; train.shard optimizer against none; resume
// at the same and at another world size; only rank 0 writes.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

const dpF, dpH, dpW, dpL, dpS = 2, 4, 4, 2, 3

// globalSource hands rank `rank` of `world` its samples of global batch i: sample j is global
// sample j·world + rank, a pure function of (i, global index), as the loader shards its order.
type globalSource struct {
	rank, world, B int
	cfg            models.Config
	i              int
	drop           bool // CFG dropout on some samples (flowmatch)
}

func (s *globalSource) Next() (*HostBatch, error) {
	C, TD := s.cfg.InDim, s.cfg.TextDim
	n := C * dpF * dpH * dpW
	hb := &HostBatch{Drop: make([]bool, s.B), TrajSigma: []float32{1, 0.6, 0.3}}
	for j := 0; j < s.B; j++ {
		g := j*s.world + s.rank
		r := rand.New(rand.NewPCG(uint64(s.i)+1, uint64(g)+7))
		for k := 0; k < n; k++ {
			hb.X0 = append(hb.X0, 0.5*float32(r.NormFloat64()))
		}
		for k := 0; k < dpL*TD; k++ {
			hb.Ctx = append(hb.Ctx, float32(r.NormFloat64()))
		}
		for k := 0; k < dpS*n; k++ {
			hb.TrajX = append(hb.TrajX, float32(r.NormFloat64()))
		}
		hb.Drop[j] = s.drop && r.Float64() < 0.3
		hb.Captions = append(hb.Captions, fmt.Sprint("sample ", g))
	}
	s.i++
	return hb, nil
}

func (s *globalSource) Cursor() ([]byte, error) { return []byte(strconv.Itoa(s.i)), nil }
func (s *globalSource) Restore(c []byte) (err error) {
	s.i, err = strconv.Atoi(string(c))
	return err
}

func dpAdam(lr float64) config.Role {
	return config.Role{LR: lr, Betas: []float64{0.9, 0.999}, Eps: 1e-8, Schedule: "constant", WeightDecay: 0.01}
}

// dpJob is a small job of objective obj that exercises every role it has (generator and critic
// every step, EMA, regression, R1).
func dpJob(obj, dir string, steps int) *config.Job {
	j := config.Defaults()
	j.Name, j.OutDir, j.Objective, j.Seed = "dp-"+obj, dir, obj, 3
	j.Train.Steps, j.Train.LogEvery, j.Train.CkptEvery, j.Train.ClipNorm = steps, 1, 0, 0.5
	j.Params = map[string]any{}
	j.Roles = map[string]config.Role{}
	st := dpAdam(1e-3)
	switch obj {
	case "flowmatch":
	case "consistency":
		j.Params["grid_n"] = 8
		j.Params["cfg_min"], j.Params["cfg_max"] = 1.0, 3.0
		st.EMADecay = 0.9
	case "dmd":
		j.Model.Recompute = true // the recompute replays gather their block too (train.shard full)
		j.Params["generator_update_ratio"] = 1
		j.Params["regression_weight"] = 0.5
		j.Roles["critic"] = dpAdam(2e-3)
		st.EMADecay = 0.9
	case "adversarial":
		j.Params["generator_update_ratio"] = 1
		j.Params["r1_weight"] = 0.1
		j.Roles["critic"] = dpAdam(2e-3)
		j.Roles["discriminator"] = dpAdam(2e-3)
	case "selfforcing":
		j.Model.Recompute = true
		j.Params["generator_update_ratio"] = 1
		j.Params["chunk_frames"] = 1
		j.Params["context_noise"] = 0.1
		j.Roles["critic"] = dpAdam(2e-3)
		// Self-Forcing's β1 = 0: no first-moment buffer (optim.go firstMoment), sharded too
		st.Betas = []float64{0, 0.999}
		c := j.Roles["critic"]
		c.Betas = []float64{0, 0.999}
		j.Roles["critic"] = c
	case "odeinit":
		j.Params["chunk_frames"] = 1
	}
	j.Roles["student"] = st
	return &j
}

// dpDevice makes each rank's device in dpRun.
var dpDevice = kernels.CPU

// dpWrap, when set, wraps each rank's communicator and device in dpRun.
var dpWrap func(rank int, c dist.Comm, d kernels.Device) (dist.Comm, kernels.Device)

// dpValidate, when set, is every rank's Options.Validate in dpRun.
var dpValidate func(rank, step int, tr *Trainer) error

var dpObjectives = []string{"flowmatch", "consistency", "dmd", "adversarial", "selfforcing", "odeinit"}

// dpRun trains job on world ranks with batch globalB/world each (steps optimizer steps, through
// Run) and returns the trainers. dirs, when set, gives rank r its own out_dir (to see who writes).
// dpLeg runs job's first steps steps on world ranks into a fresh folder and returns it (the first
// leg of an interrupted run, for dpResume).
func dpLeg(t *testing.T, job *config.Job, steps, world, globalB int) string {
	t.Helper()
	leg := *job
	leg.OutDir, leg.Train.Steps = t.TempDir(), steps
	dpRun(t, &leg, world, globalB, nil)
	return leg.OutDir
}

// dpResume runs job to its end on world ranks, resumed from the run folder legDir, into a fresh
// folder.
func dpResume(t *testing.T, job *config.Job, legDir string, world, globalB int) []*Trainer {
	t.Helper()
	res := *job
	res.OutDir, res.Train.Resume = t.TempDir(), legDir
	return dpRun(t, &res, world, globalB, nil)
}

func dpRun(t *testing.T, job *config.Job, world, globalB int, dirs []string) []*Trainer {
	t.Helper()
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	if globalB%world != 0 {
		t.Fatalf("global batch %d on %d ranks", globalB, world)
	}
	B := globalB / world
	build := func(rank int, c dist.Comm) (*Trainer, error) {
		j := *job
		if dirs != nil {
			j.OutDir = dirs[rank]
		}
		s := models.Shape{B: B, F: dpF, H: dpH, W: dpW, L: dpL, Recompute: j.Model.Recompute}
		if j.Objective == "selfforcing" || j.Objective == "odeinit" {
			s.ChunkFrames = 1
		}
		var validate func(int, *Trainer) error
		if dpValidate != nil && rank == 0 { // as the CLI does: only rank 0 has a validator
			validate = func(step int, tr *Trainer) error { return dpValidate(rank, step, tr) }
		}
		dev := dpDevice()
		if dpWrap != nil && c != nil {
			c, dev = dpWrap(rank, c, dev)
		}
		return New(Options{Job: &j, Dev: dev, Model: cfg, Shape: s, Null: make([]float32, dpL*cfg.TextDim),
			RandomInit: true, Comm: c, Validate: validate,
			Source: &globalSource{rank: rank, world: world, B: B, cfg: cfg, drop: j.Objective == "flowmatch"}})
	}
	if world == 1 && job.Train.Shard == "" {
		tr, err := build(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Run(); err != nil {
			t.Fatal(err)
		}
		keepWhole(t, tr)
		return []*Trainer{tr}
	}
	trs := make([]*Trainer, world)
	err = dist.Run(dist.Local(world), func(rank int, c dist.Comm) error {
		tr, err := build(rank, c)
		if err != nil {
			return err
		}
		trs[rank] = tr
		if err := tr.Run(); err != nil {
			return err
		}
		keepWhole(t, tr) // a collective for sharded roles: before the communicator closes
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return trs
}

var (
	wholeMu sync.Mutex
	wholeOf = map[*Trainer]map[string][]float32{}
)

// keepWhole records every role's whole weights (table layout) of a trainer after its run.
func keepWhole(t *testing.T, tr *Trainer) {
	m := map[string][]float32{}
	for _, r := range tr.roles {
		w, err := tr.WholeWeights(r.Spec.Name)
		if err != nil {
			t.Error(err)
			return
		}
		m[r.Spec.Name] = w
	}
	wholeMu.Lock()
	wholeOf[tr] = m
	wholeMu.Unlock()
}

// hostW is a role's whole weights after the run (keepWhole).
func hostW(tr *Trainer, name string) []float32 {
	wholeMu.Lock()
	defer wholeMu.Unlock()
	return wholeOf[tr][name]
}

// sameOnEveryRank asserts that every role's weights are bit-identical on all ranks (under
// train.shard full: the replicated embeddings and head; the blocks exist once, in slices).
func sameOnEveryRank(t *testing.T, trs []*Trainer) {
	t.Helper()
	for _, r0 := range trs[0].roles {
		w0 := localW(r0)
		for q := 1; q < len(trs); q++ {
			wq := localW(trs[q].byName[r0.Spec.Name])
			for i := range w0 {
				if math.Float32bits(w0[i]) != math.Float32bits(wq[i]) {
					t.Fatalf("role %s: rank %d's weight %d is %v, rank 0's %v: the ranks diverged", r0.Spec.Name, q, i, wq[i], w0[i])
				}
			}
		}
	}
}

// dpTol is the tolerance of N ranks against one, on ‖w_N − w_1‖ / ‖w_1 − w_init‖ per role: the
// ranks see the same samples with the same random draws, so only the order of fp32 reductions
// differs (per-rank loss means and gradient sums over B/N samples, then the mean over ranks, against
// one sum over B), ~1e-7 relative on a gradient; AdamW's m/√v passes it on, amplified only where a
// gradient is near 0 (eps 1e-8). Measured: at most 5e-5 over every objective and role (flowmatch
// 2e-6, selfforcing's student on 3 ranks 5e-5). Ranks that key their samples' randomness by the
// local index instead of the global one give 0.8–1.3, and ranks that skip the all-reduce diverge
// from each other at once (both checked by hand).
const dpTol = 1e-3

// compareRoles returns, per role, ‖w_a − w_b‖ / ‖w_b − w_init‖ (w_init from init).
func compareRoles(t *testing.T, a, b []*Trainer, init map[string][]float32) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, rb := range b[0].roles {
		name := rb.Spec.Name
		wa, wb := hostW(a[0], name), hostW(b[0], name)
		var diff, move float64
		for i := range wb {
			d := float64(wa[i] - wb[i])
			diff += d * d
			if init != nil {
				m := float64(wb[i] - init[name][i])
				move += m * m
			}
		}
		diff, move = math.Sqrt(diff), math.Sqrt(move)
		if init == nil {
			out[name] = diff
			continue
		}
		if move == 0 {
			if diff != 0 {
				out[name] = math.Inf(1)
			}
			continue // a frozen role (teacher): identical
		}
		out[name] = diff / move
	}
	return out
}

// initWeights builds the job's roles (no step) and returns their initial weights.
func initWeights(t *testing.T, job *config.Job) map[string][]float32 {
	j := *job
	j.Train.Steps = 0
	trs := dpRun(t, &j, 1, 6, nil)
	m := map[string][]float32{}
	for _, r := range trs[0].roles {
		m[r.Spec.Name] = hostW(trs[0], r.Spec.Name)
	}
	return m
}

// localW is what a rank holds of a role that every rank holds alike: the whole buffer, or the
// replicated part of a sharded DiT.
func localW(r *role) []float32 {
	h := make([]float32, r.W.Numel())
	r.W.Dev.ToHost(h, r.W)
	if r.Net == nil || !r.Net.Sharded() {
		return h
	}
	var rep []float32
	for _, o := range r.Net.Replicated() {
		rep = append(rep, h[o[0]:o[1]]...)
	}
	return rep
}

// For every objective: 2 and 3 ranks with batch 6/N give the weights of one rank with batch 6
// after 3 steps; the ranks agree bit for bit after each run; train.shard optimizer and full give
// the weights of none.
func TestDataParallelMatchesOneRank(t *testing.T) {
	const steps = 3
	for _, obj := range dpObjectives {
		t.Run(obj, func(t *testing.T) {
			job := dpJob(obj, t.TempDir(), steps)
			init := initWeights(t, job)
			one := dpRun(t, job, 1, 6, nil)
			for _, c := range []struct {
				world int
				shard string
			}{{2, "none"}, {3, "none"}, {2, "optimizer"}, {3, "optimizer"}, {2, "full"}, {3, "full"}} {
				j := *job
				j.OutDir = t.TempDir()
				j.Train.Shard = c.shard
				trs := dpRun(t, &j, c.world, 6, nil)
				sameOnEveryRank(t, trs)
				if c.shard == "full" { // every DiT role holds its blocks in slices
					for _, r := range trs[0].roles {
						if r.Net != nil && (!r.Net.Sharded() || r.W.Numel() >= r.Net.FullNumel()) {
							t.Fatalf("shard full: role %s holds %d of %d parameters", r.Spec.Name, r.W.Numel(), r.Net.FullNumel())
						}
					}
				}
				sameMetrics(t, one[0].Dir, trs[0].Dir, fmt.Sprintf("%s, %d ranks, shard %s", obj, c.world, c.shard))
				for name, rel := range compareRoles(t, trs, one, init) {
					t.Logf("%s, %d ranks, shard %s: role %s: ‖Δw‖ / ‖w − w_init‖ = %.2g", obj, c.world, c.shard, name, rel)
					if !(rel <= dpTol) {
						t.Errorf("%s, %d ranks, shard %s: role %s differs from one rank by %.3g of its move (tolerance %g)", obj, c.world, c.shard, name, rel, dpTol)
					}
				}
			}
		})
	}
}

// readMetrics reads a run's metrics.jsonl.
func readMetrics(t *testing.T, dir string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var recs []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		recs = append(recs, m)
	}
	return recs
}

// sameMetrics: the losses and gradient norms logged by N ranks (averaged over the ranks) are the
// one rank's (fp32 tolerance: they travel as fp32), and the lines say the world and global batch.
func sameMetrics(t *testing.T, oneDir, dir, what string) {
	t.Helper()
	a, b := readMetrics(t, oneDir), readMetrics(t, dir)
	if len(a) != len(b) {
		t.Fatalf("%s: %d metrics lines, one rank wrote %d", what, len(b), len(a))
	}
	for i := range a {
		if b[i]["global_batch"] != a[i]["global_batch"] || a[i]["world"] != 1.0 || b[i]["world"] == 1.0 {
			t.Errorf("%s: line %d: global_batch %v, world %v; one rank: %v, %v", what, i, b[i]["global_batch"], b[i]["world"], a[i]["global_batch"], a[i]["world"])
		}
		for k, va := range a[i] {
			if !strings.Contains(k, "loss") && !strings.HasPrefix(k, "grad_norm/") {
				continue
			}
			x, y := va.(float64), b[i][k].(float64)
			if math.Abs(x-y) > 1e-4*math.Max(math.Abs(x), 1e-3) {
				t.Errorf("%s: step %v: %s = %v, one rank: %v", what, a[i]["step"], k, y, x)
			}
		}
	}
}

// Only rank 0 writes: every rank gets its own out_dir here, and only rank 0's has anything.
func TestDataParallelOnlyRankZeroWrites(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	job := dpJob("dmd", dirs[0], 2)
	job.Train.Shard = "full"
	job.Train.SampleEvery = 1
	validated := make([]int, 3)
	job.Name = "dp-validate"
	dpValidate = func(rank, step int, tr *Trainer) error {
		validated[rank]++
		if m := tr.Net("ema"); m == nil || m.Sharded() {
			return fmt.Errorf("validation on rank %d: Net(ema) is not a whole DiT", rank)
		}
		return nil
	}
	defer func() { dpValidate = nil }()
	trs := dpRun(t, job, 3, 6, dirs)
	if validated[0] != 2 {
		t.Errorf("validations on rank 0: %d, want 2", validated[0])
	}
	// after Run, rank 0's Net gives whole networks (an evaluation on rank 0 alone, as the demo's)
	for _, name := range []string{"teacher", "student", "ema"} {
		m := trs[0].Net(name)
		if m == nil || m.Sharded() {
			t.Fatalf("after Run: rank 0's Net(%s) is not a whole DiT", name)
		}
		w := make([]float32, m.W.Numel())
		m.Dev.ToHost(w, m.W)
		if !bitsEqual(w, hostW(trs[0], name)) {
			t.Errorf("after Run: rank 0's whole %s differs from the gathered weights", name)
		}
	}
	// and a sharded network run by one rank alone fails loudly, not with weights that are not there
	func() {
		defer func() {
			if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "sharded DiT") {
				t.Errorf("a forward of a sharded DiT on one rank after the others left: panic %v, want one naming the sharded DiT", p)
			}
		}()
		m := trs[1].Net("student")
		cfg := m.Cfg
		s := models.Shape{B: 1, F: dpF, H: dpH, W: dpW, L: dpL}
		dev := m.Dev
		m.Forward(m.NewPass(s), dev.Alloc(kernels.F32, 1, cfg.InDim, dpF, dpH, dpW), dev.Alloc(kernels.F32, 1, dpF), dev.Alloc(kernels.F32, 1, dpL, cfg.TextDim))
	}()
	for _, f := range []string{"job.yaml", "metrics.jsonl", "checkpoints/latest", "checkpoints/step-000002/state.json",
		"checkpoints/step-000002/optim.student.safetensors", "checkpoints/step-000002/teacher.safetensors"} {
		if _, err := os.Stat(filepath.Join(dirs[0], f)); err != nil {
			t.Errorf("rank 0: %v", err)
		}
	}
	for r := 1; r < 3; r++ {
		if es, _ := os.ReadDir(dirs[r]); len(es) > 0 {
			t.Errorf("rank %d wrote %d entries into its out_dir (%s ...)", r, len(es), es[0].Name())
		}
	}
}

// Resume: at the same world size (2 ranks, train.shard optimizer or full) a run stopped at step 2
// and resumed to 4 is the straight run bit for bit (weights and the consolidated AdamW moments);
// resumed on 3 ranks instead (and on 1), the run goes on and stays within the data-parallel
// tolerance of the straight run.
func TestDataParallelResume(t *testing.T) {
	for _, c := range []struct{ obj, shard string }{{"dmd", "optimizer"}, {"selfforcing", "optimizer"}, {"dmd", "full"}, {"selfforcing", "full"}} {
		obj := c.obj
		t.Run(obj+"/"+c.shard, func(t *testing.T) {
			straightDir := t.TempDir()
			job := dpJob(obj, straightDir, 4)
			job.Train.Shard = c.shard
			init := initWeights(t, job)
			straight := dpRun(t, job, 2, 6, nil)

			legDir := dpLeg(t, job, 2, 2, 6)

			for _, world := range []int{2, 3, 1} {
				trs := dpResume(t, job, legDir, world, 6)
				if trs[0].Step != 4 {
					t.Fatalf("resumed on %d ranks: at step %d, want 4", world, trs[0].Step)
				}
				if world == 2 {
					for _, r := range straight[0].roles {
						if !bitsEqual(hostW(straight[0], r.Spec.Name), hostW(trs[0], r.Spec.Name)) {
							t.Errorf("resumed on 2 ranks: role %s is not the straight run's bit for bit", r.Spec.Name)
						}
					}
					for _, name := range []string{"student", "critic"} {
						a := readCkpt(t, straight[0].Dir, "optim."+name+".safetensors")
						b := readCkpt(t, trs[0].Dir, "optim."+name+".safetensors")
						for _, k := range []string{"m", "v"} {
							if !bitsEqual(a[k], b[k]) {
								t.Errorf("resumed on 2 ranks: %s's AdamW %s is not the straight run's bit for bit", name, k)
							}
						}
					}
					continue
				}
				sameOnEveryRank(t, trs)
				for name, rel := range compareRoles(t, trs, straight, init) {
					t.Logf("resumed on %d ranks: role %s: ‖Δw‖ / ‖w − w_init‖ = %.2g", world, name, rel)
					if !(rel <= dpTol) {
						t.Errorf("resumed on %d ranks: role %s differs from the straight 2-rank run by %.3g of its move (tolerance %g)", world, name, rel, dpTol)
					}
				}
			}
		})
	}
}

func bitsEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// readCkpt reads a file of a run's latest checkpoint.
func readCkpt(t *testing.T, run, file string) map[string][]float32 {
	t.Helper()
	dir, err := ResolveCheckpoint(run)
	if err != nil {
		t.Fatal(err)
	}
	ts, _, err := models.ReadSafetensors(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]float32{}
	for k, v := range ts {
		out[k] = v.Data
	}
	return out
}

// LoaderSource.Restore carries rank 0's cursor to any rank of any world size: with the same global
// batch the next batch of every rank is the one a straight run at that world size gives (the
// loader's global order does not depend on the world size); with another global batch, the run
// continues at the first whole batch after the samples already used.
func TestLoaderCursorAcrossWorlds(t *testing.T) {
	files, err := data.WriteSynth(t.TempDir(), data.SynthOptions{Count: 50, Heldout: 1, Frames: 4, Size: 16, TextDim: 8, Seed: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := data.Open(files.Train)
	if err != nil {
		t.Fatal(err)
	}
	open := func(rank, world, B int) LoaderSource {
		l, err := data.NewLoader(ds, data.LoaderConfig{BatchSize: B, Seed: 9, Rank: rank, World: world, TextLen: 16, Dev: kernels.CPU()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		return LoaderSource{l}
	}
	ids := func(s LoaderSource, skip int) []string {
		for i := 0; i < skip; i++ {
			if _, err := s.Next(); err != nil {
				t.Fatal(err)
			}
		}
		hb, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		return append([]string(nil), hb.IDs...)
	}
	// rank 0 of 2, batch 3, after 5 batches: 30 of the epoch's 48 samples used (epoch 0 of 8 global batches of 6)
	saved := open(0, 2, 3)
	ids(saved, 4)
	cur, err := saved.Cursor()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ world, B, skip int }{
		{2, 3, 5}, // same world: batch 5
		{3, 2, 5}, // same global batch 6 on 3 ranks: batch 5, the same samples
		{1, 6, 5},
		{2, 2, 7}, // global batch 4: 30 samples used → batch 7 (28 samples) next
		{1, 8, 3}, // global batch 8: → batch 3 (24)
	} {
		for r := 0; r < c.world; r++ {
			res := open(r, c.world, c.B)
			if err := res.Restore(cur); err != nil {
				t.Fatalf("world %d batch %d rank %d: %v", c.world, c.B, r, err)
			}
			got, want := ids(res, 0), ids(open(r, c.world, c.B), c.skip)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("world %d batch %d rank %d: resumed on %v, a straight run's batch %d is %v", c.world, c.B, r, got, c.skip, want)
			}
		}
	}
	// and the global batch 6 is the same samples at world 2 and 3
	var two, three []string
	for r := 0; r < 2; r++ {
		two = append(two, ids(open(r, 2, 3), 5)...)
	}
	for r := 0; r < 3; r++ {
		three = append(three, ids(open(r, 3, 2), 5)...)
	}
	sort.Strings(two)
	sort.Strings(three)
	if strings.Join(two, ",") != strings.Join(three, ",") {
		t.Errorf("global batch 5: %v on 2 ranks, %v on 3", two, three)
	}
}

// After every step (not only at the end) the ranks hold the same weights: every role's whole
// buffer, or under train.shard full the replicated part and the gathered whole.
func TestDataParallelSameAfterEachStep(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	for _, shard := range []string{"none", "optimizer", "full"} {
		job := dpJob("dmd", t.TempDir(), 3)
		job.Train.Shard = shard
		const world, B = 2, 2
		trs := make([]*Trainer, world)
		wholes := make([][]map[string][]float32, world) // [rank][step] role → whole weights
		err := dist.Run(dist.Local(world), func(rank int, c dist.Comm) error {
			j := *job
			s := models.Shape{B: B, F: dpF, H: dpH, W: dpW, L: dpL, Recompute: j.Model.Recompute}
			tr, err := New(Options{Job: &j, Dev: kernels.CPU(), Model: cfg, Shape: s, Null: make([]float32, dpL*cfg.TextDim),
				RandomInit: true, Comm: c, Source: &globalSource{rank: rank, world: world, B: B, cfg: cfg}})
			if err != nil {
				return err
			}
			trs[rank] = tr
			for step := 0; step < 3; step++ {
				if _, err := tr.TrainStep(); err != nil {
					return err
				}
				m := map[string][]float32{}
				for _, r := range tr.roles {
					if m[r.Spec.Name], err = tr.WholeWeights(r.Spec.Name); err != nil {
						return err
					}
					m["local/"+r.Spec.Name] = localW(r)
				}
				wholes[rank] = append(wholes[rank], m)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", shard, err)
		}
		for step := 0; step < 3; step++ {
			for name, w0 := range wholes[0][step] {
				if !bitsEqual(w0, wholes[1][step][name]) {
					t.Errorf("shard %s, step %d: %s differs between the ranks", shard, step+1, name)
				}
			}
		}
	}
}

// With gradient accumulation (2 micro-batches a step) N ranks still give one rank's weights: every
// micro-batch's samples keep their streams, the gradients are summed over micro-batches and
// averaged over ranks (under full: reduce-scattered per backward, summed on the slices).
func TestDataParallelGradAccum(t *testing.T) {
	for _, obj := range []string{"flowmatch", "dmd"} {
		job := dpJob(obj, t.TempDir(), 2)
		job.Train.GradAccum = 2
		init := initWeights(t, job)
		one := dpRun(t, job, 1, 4, nil)
		for _, shard := range []string{"none", "optimizer", "full"} {
			j := *job
			j.OutDir, j.Train.Shard = t.TempDir(), shard
			trs := dpRun(t, &j, 2, 4, nil)
			sameOnEveryRank(t, trs)
			sameMetrics(t, one[0].Dir, trs[0].Dir, fmt.Sprintf("%s, grad_accum 2, shard %s", obj, shard)) // the norms see a lost 1/accum; AdamW does not
			for name, rel := range compareRoles(t, trs, one, init) {
				if !(rel <= dpTol) {
					t.Errorf("%s, grad_accum 2, 2 ranks, shard %s: role %s differs from one rank by %.3g of its move (tolerance %g)", obj, shard, name, rel, dpTol)
				}
			}
		}
	}
}

// bf16CPU is the CPU device as a GPU in bf16 GEMM mode looks to the trainer: GEMMReadsBF16 (so a
// frozen teacher is built bf16-only, gpu_device.go) and bf16 tensors that hold bf16 values where
// FromHost and Copy write them, as on the CUDA device (the CPU device only labels them). Every
// other op and the arithmetic stay the CPU's fp32.
type bf16CPU struct{ kernels.Device }

func (bf16CPU) GEMMReadsBF16() bool { return true }

func roundHostBF16(h []float32) {
	for i, v := range h {
		h[i] = cuda.BF16ToF32(cuda.F32ToBF16(v))
	}
}

func (d bf16CPU) FromHost(t *kernels.Tensor, h []float32) {
	d.Device.FromHost(t, h)
	if t.DType == kernels.BF16 {
		roundHostBF16(t.F32)
	}
}

func (d bf16CPU) Copy(dst, src *kernels.Tensor) {
	d.Device.Copy(dst, src)
	if dst.DType == kernels.BF16 {
		roundHostBF16(dst.F32)
	}
}

// On a device whose frozen teacher is bf16 (bf16CPU, as a GPU in bf16 GEMM mode), train.shard
// full starts every role from the values no sharding starts from, bit for bit: the sharded
// teacher's fp32 slices are rounded to the bf16 values of the unsharded bf16-only teacher
// (roundBF16), so dmd's student and critic, its copies, start from the same values. Without
// roundBF16 the teacher, student, critic and ema all differ; on a Wan-1.3B DMD step on the H200 that
// was step 2's gen_loss 0.704 under full against 0.665 (an AdamW step of 2e-6 is a small fraction
// of a bf16 ulp, so the bf16 copies the GEMMs read moved for weights off the bf16 grid only). The
// training that follows computes the blocks from bf16 gathers under full (the training equivalence
// of full and none is TestDataParallelMatchesOneRank's, on the CPU's fp32).
func TestFullShardFrozenTeacherBF16(t *testing.T) {
	dpDevice = func() kernels.Device { return bf16CPU{kernels.CPU()} }
	defer func() { dpDevice = kernels.CPU }()
	job := dpJob("dmd", t.TempDir(), 3)
	init := initWeights(t, job)
	if te := init["teacher"]; len(te) == 0 {
		t.Fatal("no teacher")
	} else {
		for i, v := range te {
			if r := cuda.BF16ToF32(cuda.F32ToBF16(v)); r != v {
				t.Fatalf("the unsharded teacher's weight %d is %v, not a bf16 value (%v): bf16CPU does not emulate a bf16 teacher", i, v, r)
			}
		}
	}
	for _, world := range []int{1, 2} {
		j := *job
		j.OutDir, j.Train.Shard, j.Train.Steps = t.TempDir(), "full", 0
		trs := dpRun(t, &j, world, 6, nil)
		if !trs[0].byName["teacher"].Net.Sharded() {
			t.Fatal("shard full: the teacher is not sharded")
		}
		for name, w0 := range init {
			if w := hostW(trs[0], name); !bitsEqual(w, w0) {
				t.Errorf("shard full on %d rank(s): role %s does not start from the unsharded run's values", world, name)
			}
		}
	}
}

// recorder logs a rank's all-reduces ("AR") and its backward GEMMs ("C") in order.
type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) add(e string) {
	r.mu.Lock()
	r.log = append(r.log, e)
	r.mu.Unlock()
}

type recComm struct {
	dist.Comm
	r *recorder
}

func (c recComm) AllReduce(t *kernels.Tensor, op dist.Op) error {
	c.r.add("AR")
	return c.Comm.AllReduce(t, op)
}

func (c recComm) Reduce(t *kernels.Tensor, op dist.Op, root int) error {
	c.r.add("AR")
	return c.Comm.Reduce(t, op, root)
}

type recDev struct {
	kernels.Device
	r *recorder
}

func (d recDev) LinearBack(dx, dw, db, dy, x, w *kernels.Tensor) {
	d.r.add("C")
	d.Device.LinearBack(dx, dw, db, dy, x, w)
}

// The gradient reduction runs during the last backward: for every objective, on 2 ranks under
// train.shard none (all-reduces) and optimizer (reduces onto the slices' owners), at least one
// reduction per block of a network is issued before backward GEMMs that follow it in the step
// (the student's, or the critic's for dmd and selfforcing, are declared by the objective:
// objectives.Step.Last). Reduced after the step, none would be.
func TestDataParallelOverlap(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ obj, shard string }{
		{"flowmatch", "none"}, {"consistency", "none"}, {"dmd", "none"}, {"adversarial", "none"},
		{"selfforcing", "none"}, {"odeinit", "none"}, {"dmd", "optimizer"}, {"selfforcing", "optimizer"},
	} {
		obj := c.obj + " " + c.shard
		rec := &recorder{}
		dpWrap = func(rank int, c dist.Comm, d kernels.Device) (dist.Comm, kernels.Device) {
			if rank == 0 {
				return recComm{c, rec}, recDev{d, rec}
			}
			return c, d
		}
		job := dpJob(c.obj, t.TempDir(), 1)
		job.Train.Shard = c.shard
		dpRun(t, job, 2, 6, nil)
		dpWrap = nil
		early := 0
		for i, e := range rec.log {
			if e == "AR" && slices.Contains(rec.log[i+1:], "C") {
				early++
			}
		}
		t.Logf("%s: %d of %d log entries are all-reduces followed by backward GEMMs", obj, early, len(rec.log))
		if early < cfg.Layers {
			t.Errorf("%s: %d all-reduces issued before later backward GEMMs, want at least one per block (%d): the gradients are not reduced during the backward", obj, early, cfg.Layers)
		}
	}
}

// An objective that declares a backward the last (objectives.Step.Last) must run exactly that one:
// two, or none, are an error naming the role; one is fine and leaves G averaged.
func TestLastBackwardMisuse(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	job := dpJob("flowmatch", t.TempDir(), 1)
	s := models.Shape{B: 1, F: dpF, H: dpH, W: dpW, L: dpL}
	tr, err := New(Options{Job: job, Dev: kernels.CPU(), Model: cfg, Shape: s, Null: make([]float32, dpL*cfg.TextDim),
		RandomInit: true, Comm: dist.Local(1)[0], Source: &globalSource{world: 1, B: 1, cfg: cfg}})
	if err != nil {
		t.Fatal(err)
	}
	r := tr.byName["student"]
	dev := tr.opt.Dev
	p := r.Net.NewPass(s)
	x := dev.Alloc(kernels.F32, 1, cfg.InDim, dpF, dpH, dpW)
	tt := dev.Alloc(kernels.F32, 1, dpF)
	ctx := dev.Alloc(kernels.F32, 1, dpL, cfg.TextDim)
	dev.Fill(x, 0.5)
	for _, c := range []struct {
		backwards int
		want      string
	}{{1, ""}, {2, "ran 2 backwards after it, want 1"}, {0, "ran 0 backwards after it, want 1"}} {
		tr.lastBackward(r.Net)
		for i := 0; i < c.backwards; i++ {
			out := r.Net.Forward(p, x, tt, ctx)
			r.Net.Backward(p, out)
		}
		err := tr.settleOverlap(r)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "student")) {
			t.Errorf("%d backwards after Last: %v, want %q", c.backwards, err, c.want)
		}
	}
}

// train.shard optimizer on a device whose weights are bf16 (bf16CPU, as a GPU in bf16 GEMM mode):
// the trainable DiTs compute from bf16 weights while each rank keeps the fp32 master weights of its
// slice. The compute copy is the master rounded to bf16 on every rank, the checkpoint holds the
// fp32 master (values off the bf16 grid), and a resume at the same world size continues bit for
// bit, masters, moments and EMA included.
func TestOptimizerShardMasterBF16(t *testing.T) {
	dpDevice = func() kernels.Device { return bf16CPU{kernels.CPU()} }
	defer func() { dpDevice = kernels.CPU }()
	job := dpJob("dmd", t.TempDir(), 4)
	job.Train.Shard = "optimizer"
	straight := dpRun(t, job, 2, 6, nil)
	for _, name := range []string{"student", "critic"} {
		for q, tr := range straight {
			r := tr.byName[name]
			if r.W.DType != kernels.BF16 || r.master == nil || r.master.Numel() != r.sh.size() {
				t.Fatalf("rank %d: role %s: W %s, master %v: want bf16 weights and an fp32 master of the slice (%d)", q, name, r.W.DType, r.master, r.sh.size())
			}
		}
		ck := readCkpt(t, straight[0].Dir, name+".safetensors")
		w := hostW(straight[0], name) // the compute copy, table layout
		off := 0
		r := straight[0].byName[name]
		offBF16 := 0
		for _, p := range r.Table {
			v := ck[p.Name]
			for i, x := range v {
				rx := cuda.BF16ToF32(cuda.F32ToBF16(x))
				if rx != x {
					offBF16++
				}
				if math.Float32bits(rx) != math.Float32bits(w[p.Offset+i]) {
					t.Fatalf("role %s: %s[%d]: the compute weight %v is not the master %v rounded to bf16 (%v)", name, p.Name, i, w[p.Offset+i], x, rx)
				}
			}
			off += len(v)
		}
		t.Logf("role %s: %d of %d checkpointed master weights are off the bf16 grid", name, offBF16, off)
		if offBF16 < off/2 {
			t.Errorf("role %s: only %d of %d checkpointed weights are off the bf16 grid: the checkpoint holds the bf16 copy, not the fp32 master", name, offBF16, off)
		}
	}
	trs := dpResume(t, job, dpLeg(t, job, 2, 2, 6), 2, 6)
	for _, f := range []string{"student", "critic", "ema", "optim.student", "optim.critic"} {
		a, b := readCkpt(t, straight[0].Dir, f+".safetensors"), readCkpt(t, trs[0].Dir, f+".safetensors")
		for k, v := range a {
			if !bitsEqual(v, b[k]) {
				t.Errorf("resumed: %s.safetensors %s is not the straight run's bit for bit", f, k)
			}
		}
	}
}

// adversarial with disc_backbone (the critic also learns from the discriminator's backwards, so its
// last backward is the discriminator's real side, or R1's second one): 2 ranks give the weights of
// one within dpTol, with the critic's reduction launched during that backward (a wrong declaration
// would fail the step: settleOverlap).
func TestDataParallelAdversarialBackbone(t *testing.T) {
	for _, r1 := range []float64{0, 0.1} {
		job := dpJob("adversarial", t.TempDir(), 2)
		job.Params["disc_backbone"] = true
		job.Params["r1_weight"] = r1
		init := initWeights(t, job)
		one := dpRun(t, job, 1, 6, nil)
		j := *job
		j.OutDir = t.TempDir()
		trs := dpRun(t, &j, 2, 6, nil)
		for name, rel := range compareRoles(t, trs, one, init) {
			t.Logf("r1_weight %g: role %s: ‖Δw‖ / ‖w − w_init‖ = %.2g", r1, name, rel)
			if !(rel <= dpTol) {
				t.Errorf("r1_weight %g: role %s differs from one rank by %.3g of its move (tolerance %g)", r1, name, rel, dpTol)
			}
		}
		for _, r := range trs[0].roles {
			if r.ov.armed {
				t.Errorf("r1_weight %g: role %s still armed after the run", r1, r.Spec.Name)
			}
		}
	}
}

// The optimizer shard's arithmetic against enumeration, for buffer sizes that N does and does not
// divide: the ranks' slices [r·k, (r+1)·k) tile [0, N·k) without overlap; the tail [N·k, P) that
// no slice holds is owned by every rank (each keeps its moments, updated alike); local maps a
// rank's owned offsets one to one onto [0, size), slice first, then the tail.
func TestShardRanges(t *testing.T) {
	for _, P := range []int{1, 2, 7, 10, 12, 97} {
		for world := 1; world <= 4; world++ {
			held := make([]int, P) // ranks whose slice (not the tail) holds each offset
			for rank := 0; rank < world; rank++ {
				s := newShard(P, rank, world)
				k := P / world
				var offs []int
				for _, rg := range s.owned() {
					if rg[0] >= rg[1] {
						t.Fatalf("P %d world %d rank %d: empty range %v in %v", P, world, rank, rg, s.owned())
					}
					for o := rg[0]; o < rg[1]; o++ {
						offs = append(offs, o)
						if o < world*k {
							held[o]++
							if o/k != rank {
								t.Errorf("P %d world %d rank %d: owns %d of rank %d's slice", P, world, rank, o, o/k)
							}
						}
					}
				}
				want := k + P - world*k // its slice and the whole tail
				if len(offs) != want || s.size() != want {
					t.Errorf("P %d world %d rank %d: owns %d offsets, size() %d, want %d", P, world, rank, len(offs), s.size(), want)
				}
				for i, o := range offs { // owned() lists the slice, then the tail: local is the position
					if got := s.local(o); got != i {
						t.Errorf("P %d world %d rank %d: local(%d) = %d, want %d", P, world, rank, o, got, i)
					}
				}
			}
			for o, n := range held {
				if o < world*(P/world) && n != 1 {
					t.Errorf("P %d world %d: offset %d in %d slices, want 1", P, world, o, n)
				}
			}
		}
	}
}

// reduceScatterGrads (the gradients of a role whose last backward did not reduce them: a
// non-DiT head) against the mean computed here, for buffer sizes with and without a tail and with
// no slice at all (P < N): each rank's slice and the shared tail hold the ranks' mean. The
// data-parallel runs reach it only for roles without that reduction, and never with a tail there:
// mutants of the tail's all-reduce lived through them (docs/reliability.md).
func TestReduceScatterGradsTail(t *testing.T) {
	const world = 3
	for _, P := range []int{12, 10, 2} {
		err := dist.Run(dist.Local(world), func(rank int, c dist.Comm) error {
			dev := kernels.NewCPU(1)
			g := dev.Alloc(kernels.F32, P)
			h := make([]float32, P)
			for i := range h {
				h[i] = float32(100*rank + i) // rank q's gradient
			}
			dev.FromHost(g, h)
			tr := &Trainer{comm: c, opt: Options{Dev: dev}}
			r := &role{Role: &objectives.Role{Spec: objectives.RoleSpec{Name: "head"}, G: g}, sh: newShard(P, rank, world)}
			if err := tr.reduceScatterGrads(r); err != nil {
				return err
			}
			dev.ToHost(h, g)
			for _, o := range r.sh.owned() {
				for i := o[0]; i < o[1]; i++ {
					if want := float32(100*(world-1)/2 + i); h[i] != want {
						return fmt.Errorf("P %d rank %d: G[%d] = %g, want the ranks' mean %g (owned %v)", P, rank, i, h[i], want, r.sh.owned())
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
}
