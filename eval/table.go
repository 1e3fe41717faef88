package eval

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/sampler"
)

// Generate samples one video per prompt of set (its first count rows; 0 = all) with net, in
// batches of batch (0 = 8). Video i's noise is seeded by seed+i, so two models sampled with one
// seed start from the same noise. frames overrides the number of latent frames (0 = set.F; e.g.
// 2·F for a streamed video longer than the training length). Returns the latents [count, C, F', H, W]
// in the network's (normalized) space, the NFE per video and the mean milliseconds per video.
func Generate(net sampler.Net, set *Set, count, batch int, seed int64, o sampler.Options, frames int) ([]float32, int, float64, error) {
	if count <= 0 || count > set.N {
		count = set.N
	}
	if batch <= 0 {
		batch = 8
	}
	if frames <= 0 {
		frames = set.F
	}
	lt := set.L * set.TextDim
	null := set.Null
	if null == nil {
		null = make([]float32, lt) // the toy encoder's empty prompt is all zeros (data.EncodeText(""))
	}
	var out []float32
	nfe, ms := 0, 0.0
	for lo := 0; lo < count; lo += batch {
		hi := min(lo+batch, count)
		b := &sampler.Batch{C: set.C, F: frames, H: set.H, W: set.W, L: set.L, TextDim: set.TextDim,
			Text: set.Text[lo*lt : hi*lt], Null: null}
		for i := lo; i < hi; i++ {
			b.Seeds = append(b.Seeds, seed+int64(i))
		}
		r, err := sampler.Sample(net, b, o)
		if err != nil {
			return nil, 0, 0, err
		}
		out = append(out, r.Latents...)
		nfe = r.NFE
		ms += r.Millis * float64(hi-lo)
	}
	return out, nfe, ms / float64(count), nil
}

// Denormalize undoes the loader's per-channel normalization in place: x = y·std + mean over
// latents [N, C, ...] (mean nil = none).
func Denormalize(lat []float32, N, C int, mean, std []float64) error {
	if mean == nil {
		return nil
	}
	if len(mean) != C || len(std) != C {
		return fmt.Errorf("eval: normalization has %d means and %d stds for %d channels", len(mean), len(std), C)
	}
	per := len(lat) / (N * C)
	for i := 0; i < N*C; i++ {
		c := i % C
		for j := i * per; j < (i+1)*per; j++ {
			lat[j] = float32(float64(lat[j])*std[c] + mean[c])
		}
	}
	return nil
}

// TableSpec is the distillation table's setup.
type TableSpec struct {
	Steps        []int // student (and teacher) step counts, k ∈ {1, 2, 4}
	TeacherSteps int   // the reference teacher row (50)
	// TeacherCFG is the guidance w the student was distilled from (params.cfg). The teacher's
	// Euler rows are sampled at it (a guided call counts 2 NFE) and, when it is not 1, also without
	// guidance, so the student stands beside the teacher it was taught by and the plain teacher.
	TeacherCFG   float64
	TeacherShift float64 // shift of the teacher's Euler grid
	// Student is the student's sampler: Method fewstep (DMD, adversarial, odeinit), consistency, or
	// stream (the causal Self-Forcing student; also set ChunkFrames etc.); CFG, Shift, GridN.
	// Steps and Sigmas are set per row.
	Student sampler.Options
	// Students are more students sampled the same way, each with its own row label (e.g. one per
	// training seed), after the student of DistillTable's argument (label "student").
	Students []Labeled
	// StudentCausal runs the student block-causally (chunks of Student.ChunkFrames) with every
	// sampler; the stream sampler always does.
	StudentCausal bool
	// StudentLists optionally gives the exact denoising list (σ values) per k, e.g. the timesteps the
	// student was trained on /1000; absent k use DenoisingList(k, Student.Shift).
	StudentLists map[int][]float64
	Count        int   // prompts (the first Count held-out rows; 0 = all)
	Batch        int   // videos per sampler call (0 = 8)
	Seed         int64 // noise seed; video i uses Seed+i in every row
	// Seeds, when set, replaces Seed: every row is sampled once per evaluation seed and reports the
	// mean and the sample standard deviation over the seeds (Row.*Std).
	Seeds []int64
	// FDBlocks adds each row's FD split by feature block (FeatureBlocks; mean over the seeds).
	FDBlocks bool
	// LongFrames > 0 adds a row: the student streamed for LongFrames latent frames (e.g. twice the
	// training length), scored for CondAcc and stability (FD needs equal lengths: NaN).
	LongFrames int
	Mean, Std  []float64                         // latent normalization to undo before decoding (nil = none)
	Progress   func(done, total int, row string) // optional, called before each row
}

// Labeled is a student with the label of its rows.
type Labeled struct {
	Label string
	Net   *models.DiT
}

// Row is one line of the table.
type Row struct {
	Model      string  `json:"model"`   // data | teacher | student (or the student's label)
	Sampler    string  `json:"sampler"` // euler | fewstep | consistency | stream | real
	Steps      int     `json:"steps"`
	Frames     int     `json:"frames"`       // latent frames per video
	CFG        float64 `json:"cfg"`          // the sampler's guidance w (1 = none)
	NFE        int     `json:"nfe"`          // network evaluations per video (CFG counts 2)
	MsPerVideo float64 `json:"ms_per_video"` // wall time per video, batched
	FPS        float64 `json:"fps"`          // latent frames per second of wall time
	Metrics
	// Over the evaluation seeds (Seeds > 1): Metrics holds the means, these the sample standard
	// deviations (0 with one seed).
	Seeds        int     `json:"seeds"`
	CondAccStd   float64 `json:"cond_acc_std"`
	FDStd        float64 `json:"fd_std"`
	StabilityStd float64 `json:"stability_std"`
	// Drift is a row longer than the training length frame by frame (MeasureFrameDrift against the
	// first training-length frames; mean over the seeds), nil for the others.
	Drift *FrameDrift `json:"frame_drift,omitempty"`
}

// Table is the distillation table.
type Table struct {
	Count      int      `json:"count"`       // videos per row (per seed)
	Reference  int      `json:"reference"`   // real held-out videos the FD compares with
	Seed       int64    `json:"seed"`        // the first evaluation seed
	Seeds      []int64  `json:"seeds"`       // every evaluation seed
	DistillCFG float64  `json:"distill_cfg"` // the guidance the student was distilled from
	Blocks     []string `json:"blocks,omitempty"`
	Rows       []Row    `json:"rows"`
}

// DistillTable samples the teacher (Euler) at TeacherSteps and at each k, at the student's
// distillation guidance and without guidance, and each student at each k with its own sampler, for
// the first Count held-out prompts, and scores every row against the held-out videos after those
// rows (all of them if fewer than 16 are left). The first row, "data", is the prompts' own real
// videos scored the same way: CondAcc 1, stability ≈ 0, and the FD floor that Count samples allow.
// The student may be nil (teacher rows only, plus spec.Students).
func DistillTable(teacher, student *models.DiT, held *Set, spec TableSpec) (*Table, error) {
	if spec.Count <= 0 || spec.Count > held.N {
		spec.Count = held.N
	}
	seeds := spec.Seeds
	if len(seeds) == 0 {
		seeds = []int64{spec.Seed}
	}
	if spec.TeacherCFG == 0 {
		spec.TeacherCFG = 1
	}
	// The FD reference: the held-out videos after the prompts' rows (disjoint from the data row), or
	// all of them when too few are left.
	refSet := held
	if held.N-spec.Count >= 16 {
		refSet = held.Slice(spec.Count, held.N)
	}
	real, err := refSet.Videos()
	if err != nil {
		return nil, err
	}
	realFeats := RealFeatures(real)
	t := &Table{Count: spec.Count, Seed: seeds[0], Seeds: seeds, Reference: refSet.N, DistillCFG: spec.TeacherCFG}
	if spec.FDBlocks {
		for _, b := range FeatureBlocks(held.F) {
			t.Blocks = append(t.Blocks, b.Name)
		}
	}

	// the data row: the prompts' own real videos, scored like a generated row
	sub := held.Slice(0, spec.Count)
	subV, _ := sub.Videos()
	dm, err := ScoreBlocks(subV, sub.Captions, realFeats, spec.FDBlocks)
	if err != nil {
		return nil, err
	}
	t.Rows = append(t.Rows, Row{Model: "data", Sampler: "real", Frames: held.F, Metrics: dm, Seeds: 1})

	type job struct {
		model  string
		net    sampler.Net
		o      sampler.Options
		frames int
	}
	var jobs []job
	tnet := sampler.NewDiTNet(teacher, 0)
	defer tnet.Free()
	ws := []float64{1}
	if spec.TeacherCFG != 1 {
		ws = append(ws, spec.TeacherCFG)
	}
	teach := func(k int) {
		for _, w := range ws {
			jobs = append(jobs, job{"teacher", tnet, sampler.Options{Method: sampler.Euler, Steps: k, CFG: w, Shift: spec.TeacherShift}, 0})
		}
	}
	if spec.TeacherSteps > 0 {
		teach(spec.TeacherSteps)
	}
	students := spec.Students
	if student != nil {
		students = append([]Labeled{{"student", student}}, students...)
	}
	chunk := 0
	if spec.Student.Method == sampler.Stream || spec.StudentCausal {
		chunk = spec.Student.ChunkFrames
	}
	snets := make([]*sampler.DiTNet, len(students))
	for i, s := range students {
		snets[i] = sampler.NewDiTNet(s.Net, chunk)
		defer snets[i].Free()
	}
	stud := func(k, frames int) {
		o := spec.Student
		o.Steps, o.Sigmas = k, spec.StudentLists[k]
		for i, s := range students {
			jobs = append(jobs, job{s.Label, snets[i], o, frames})
		}
	}
	for _, k := range spec.Steps {
		teach(k)
		stud(k, 0)
	}
	if spec.LongFrames > 0 && len(spec.Steps) > 0 {
		stud(spec.Steps[len(spec.Steps)-1], spec.LongFrames)
	}

	for i, j := range jobs {
		if spec.Progress != nil {
			spec.Progress(i, len(jobs), fmt.Sprintf("%s %s %d", j.model, j.o.Method, j.o.Steps))
		}
		frames := held.F
		if j.frames > 0 {
			frames = j.frames
		}
		var ref [][]float64
		if frames == held.F {
			ref = realFeats
		}
		var per []Metrics
		var drifts []FrameDrift
		var nfe int
		var ms float64
		for _, seed := range seeds {
			lat, n, m, err := Generate(j.net, held, spec.Count, spec.Batch, seed, j.o, j.frames)
			if err != nil {
				return nil, fmt.Errorf("eval: %s %s %d steps: %w", j.model, j.o.Method, j.o.Steps, err)
			}
			nfe, ms = n, ms+m/float64(len(seeds))
			if err := Denormalize(lat, spec.Count, held.C, spec.Mean, spec.Std); err != nil {
				return nil, err
			}
			gen, err := DecodeLatents(lat, spec.Count, held.C, frames, held.H, held.W)
			if err != nil {
				return nil, err
			}
			gen.DirFrames = held.F / 2 // the bounce-free half of the training length, also for long videos
			sm, err := ScoreBlocks(gen, held.Captions[:spec.Count], ref, spec.FDBlocks)
			if err != nil {
				return nil, err
			}
			per = append(per, sm)
			if frames > held.F {
				fd, err := MeasureFrameDrift(gen, held.Captions[:spec.Count], held.F)
				if err != nil {
					return nil, err
				}
				drifts = append(drifts, fd)
			}
		}
		fps := math.NaN()
		if ms > 0 {
			fps = float64(frames) / (ms / 1000)
		}
		w := j.o.CFG
		if w == 0 {
			w = 1
		}
		r := Row{Model: j.model, Sampler: string(j.o.Method), Steps: j.o.Steps, Frames: frames, CFG: w,
			NFE: nfe, MsPerVideo: ms, FPS: fps}
		r.aggregate(per)
		if len(drifts) > 0 {
			r.Drift = meanDrift(drifts)
		}
		t.Rows = append(t.Rows, r)
	}
	if spec.Progress != nil {
		spec.Progress(len(jobs), len(jobs), "done")
	}
	return t, nil
}

// meanDrift is the frame-by-frame mean of the seeds' drifts.
func meanDrift(ds []FrameDrift) *FrameDrift {
	F := len(ds[0].Size)
	m := &FrameDrift{Ref: ds[0].Ref, Size: make([]float64, F), Colour: make([]float64, F), ColourAcc: make([]float64, F)}
	for f := 0; f < F; f++ {
		var sz, col, acc []float64
		for _, d := range ds {
			sz, col, acc = append(sz, d.Size[f]), append(col, d.Colour[f]), append(acc, d.ColourAcc[f])
		}
		m.Size[f], _ = MeanSpread(sz)
		m.Colour[f], _ = MeanSpread(col)
		m.ColourAcc[f], _ = MeanSpread(acc)
	}
	return m
}

// aggregate sets the row's metrics to the means over the seeds' metrics and its spreads to their
// sample standard deviations.
func (r *Row) aggregate(per []Metrics) {
	col := func(f func(Metrics) float64) (float64, float64) {
		xs := make([]float64, len(per))
		for i, m := range per {
			xs[i] = f(m)
		}
		return MeanSpread(xs)
	}
	r.Seeds = len(per)
	r.N = per[0].N
	r.CondAcc, r.CondAccStd = col(func(m Metrics) float64 { return m.CondAcc })
	r.FD, r.FDStd = col(func(m Metrics) float64 { return m.FD })
	r.Stability, r.StabilityStd = col(func(m Metrics) float64 { return m.Stability })
	r.ColourAcc, _ = col(func(m Metrics) float64 { return m.ColourAcc })
	r.DirAcc, _ = col(func(m Metrics) float64 { return m.DirAcc })
	r.SizeDrift, _ = col(func(m Metrics) float64 { return m.SizeDrift })
	r.ColourDrift, _ = col(func(m Metrics) float64 { return m.ColourDrift })
	if per[0].FDBlocks != nil {
		r.FDBlocks = make([]float64, len(per[0].FDBlocks))
		for b := range r.FDBlocks {
			r.FDBlocks[b], _ = col(func(m Metrics) float64 { return m.FDBlocks[b] })
		}
	}
}

// Text renders the table for a terminal.
func (t *Table) Text() string {
	var b strings.Builder
	multi := len(t.Seeds) > 1
	fmt.Fprintf(&b, "distillation table: %d held-out prompts per row, FD against %d real held-out videos, ", t.Count, t.Reference)
	if multi {
		fmt.Fprintf(&b, "%d evaluation seeds %v (mean ± sample std over the seeds)\n", len(t.Seeds), t.Seeds)
	} else {
		fmt.Fprintf(&b, "seed %d\n", t.Seed)
	}
	if w := t.DistillCFG; w != 0 && w != 1 {
		fmt.Fprintf(&b, "the student was distilled from the teacher at guidance w = %g; teacher rows at w = 1 and w = %g (a guided step counts 2 NFE)\n", w, w)
	} else {
		fmt.Fprintf(&b, "the student was distilled from the teacher without guidance (w = 1)\n")
	}
	mw := 8
	for _, r := range t.Rows {
		mw = max(mw, len(r.Model))
	}
	vw := [3]int{8, 8, 9} // CondAcc, FD, stability
	if multi {
		vw = [3]int{13, 13, 15}
	}
	fmt.Fprintf(&b, "%-*s %-12s %5s %6s %4s %5s %*s %*s %*s %10s %10s %9s\n",
		mw, "model", "sampler", "steps", "frames", "w", "NFE", vw[0], "CondAcc", vw[1], "FD", vw[2], "stability", "ms/video", "frames/s", "n")
	pm := func(v, sd float64, f string) string {
		if math.IsNaN(v) {
			return "-"
		}
		if multi {
			return fmt.Sprintf(f+"±"+f, v, sd)
		}
		return fmt.Sprintf(f, v)
	}
	for _, r := range t.Rows {
		steps, nfe, ms, fps, w := "-", "-", "-", "-", "-"
		if r.Model != "data" {
			steps, nfe, w = fmt.Sprint(r.Steps), fmt.Sprint(r.NFE), fmt.Sprintf("%g", r.CFG)
			ms, fps = fmt.Sprintf("%.1f", r.MsPerVideo), fmt.Sprintf("%.1f", r.FPS)
		}
		fmt.Fprintf(&b, "%-*s %-12s %5s %6d %4s %5s %*s %*s %*s %10s %10s %9d\n",
			mw, r.Model, r.Sampler, steps, r.Frames, w, nfe, vw[0], pm(r.CondAcc, r.CondAccStd, "%.3f"),
			vw[1], pm(r.FD, r.FDStd, "%.3f"), vw[2], pm(r.Stability, r.StabilityStd, "%.4f"), ms, fps, r.N)
	}
	for _, r := range t.Rows {
		if d := r.Drift; d != nil {
			F := len(d.Size)
			fmt.Fprintf(&b, "%s %s %d steps, %d frames, frame by frame against its first %d: size drift %.3f → %.3f, colour drift %.3f → %.3f, colour accuracy %.3f → %.3f (frame %d → %d)\n",
				r.Model, r.Sampler, r.Steps, F, d.Ref, d.Size[d.Ref-1], d.Size[F-1], d.Colour[d.Ref-1], d.Colour[F-1], d.ColourAcc[d.Ref-1], d.ColourAcc[F-1], d.Ref-1, F-1)
		}
	}
	if len(t.Blocks) > 0 {
		fmt.Fprintf(&b, "FD by feature block (eval.FeatureBlocks; the blocks' sum is near the whole FD, equal when the blocks are uncorrelated):\n")
		fmt.Fprintf(&b, "%-*s %-12s %5s %4s", mw, "model", "sampler", "steps", "w")
		for _, n := range t.Blocks {
			fmt.Fprintf(&b, " %7s", n)
		}
		fmt.Fprintf(&b, " %7s %7s\n", "sum", "FD")
		for _, r := range t.Rows {
			if r.FDBlocks == nil {
				continue
			}
			steps, w := "-", "-"
			if r.Model != "data" {
				steps, w = fmt.Sprint(r.Steps), fmt.Sprintf("%g", r.CFG)
			}
			fmt.Fprintf(&b, "%-*s %-12s %5s %4s", mw, r.Model, r.Sampler, steps, w)
			sum := 0.0
			for _, v := range r.FDBlocks {
				fmt.Fprintf(&b, " %7.3f", v)
				sum += v
			}
			fmt.Fprintf(&b, " %7.3f %7.3f\n", sum, r.FD)
		}
	}
	return b.String()
}

// JSON renders the table (NaN → null).
func (t *Table) JSON() ([]byte, error) {
	type jrow struct {
		Row
		FD    *float64 `json:"fd"`
		FDStd *float64 `json:"fd_std"`
		FPS   *float64 `json:"fps"`
	}
	opt := func(v float64) *float64 {
		if math.IsNaN(v) {
			return nil
		}
		return &v
	}
	rows := make([]jrow, len(t.Rows))
	for i, r := range t.Rows {
		rows[i].Row = r
		rows[i].FD, rows[i].FDStd, rows[i].FPS = opt(r.FD), opt(r.FDStd), opt(r.FPS)
	}
	return json.MarshalIndent(struct {
		Count      int      `json:"count"`
		Reference  int      `json:"reference"`
		Seed       int64    `json:"seed"`
		Seeds      []int64  `json:"seeds"`
		DistillCFG float64  `json:"distill_cfg"`
		Blocks     []string `json:"blocks,omitempty"`
		Rows       []jrow   `json:"rows"`
	}{t.Count, t.Reference, t.Seed, t.Seeds, t.DistillCFG, t.Blocks, rows}, "", "  ")
}
