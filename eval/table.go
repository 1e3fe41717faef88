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
	Steps        []int   // student (and teacher) step counts, k ∈ {1, 2, 4}
	TeacherSteps int     // the reference teacher row (50)
	TeacherCFG   float64 // w of the teacher's Euler sampling (1 = none)
	TeacherShift float64 // shift of the teacher's Euler grid
	// Student is the student's sampler: Method fewstep (DMD, adversarial, odeinit), consistency, or
	// stream (the causal Self-Forcing student; also set ChunkFrames etc.); CFG, Shift, GridN.
	// Steps and Sigmas are set per row.
	Student sampler.Options
	// StudentCausal runs the student block-causally (chunks of Student.ChunkFrames) with every
	// sampler; the stream sampler always does.
	StudentCausal bool
	// StudentLists optionally gives the exact denoising list (σ values) per k, e.g. the timesteps the
	// student was trained on /1000; absent k use DenoisingList(k, Student.Shift).
	StudentLists map[int][]float64
	Count        int   // prompts (the first Count held-out rows; 0 = all)
	Batch        int   // videos per sampler call (0 = 8)
	Seed         int64 // noise seed; video i uses Seed+i in every row
	// LongFrames > 0 adds a row: the student streamed for LongFrames latent frames (e.g. twice the
	// training length), scored for CondAcc and stability (FD needs equal lengths: NaN).
	LongFrames int
	Mean, Std  []float64                         // latent normalization to undo before decoding (nil = none)
	Progress   func(done, total int, row string) // optional, called before each row
}

// Row is one line of the table.
type Row struct {
	Model      string  `json:"model"`   // data | teacher | student
	Sampler    string  `json:"sampler"` // euler | fewstep | consistency | stream | real
	Steps      int     `json:"steps"`
	Frames     int     `json:"frames"`       // latent frames per video
	NFE        int     `json:"nfe"`          // network evaluations per video (CFG counts 2)
	MsPerVideo float64 `json:"ms_per_video"` // wall time per video, batched
	FPS        float64 `json:"fps"`          // latent frames per second of wall time
	Metrics
}

// Table is the distillation table.
type Table struct {
	Count     int   `json:"count"`     // videos per row
	Reference int   `json:"reference"` // real held-out videos the FD compares with
	Seed      int64 `json:"seed"`
	Rows      []Row `json:"rows"`
}

// DistillTable samples the teacher (Euler, CFG) at TeacherSteps and at each k, and the student at
// each k with its own sampler, for the first Count held-out prompts, and scores every row against
// the held-out videos after those rows (all of them if fewer than 16 are left). The first row,
// "data", is the prompts' own real videos scored the same way: CondAcc 1, stability ≈ 0, and the FD
// floor that Count samples allow. The student may be nil (teacher rows only).
func DistillTable(teacher, student *models.DiT, held *Set, spec TableSpec) (*Table, error) {
	if spec.Count <= 0 || spec.Count > held.N {
		spec.Count = held.N
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
	t := &Table{Count: spec.Count, Seed: spec.Seed, Reference: refSet.N}

	// the data row: the prompts' own real videos, scored like a generated row
	sub := held.Slice(0, spec.Count)
	subV, _ := sub.Videos()
	dm, err := ScoreRef(subV, sub.Captions, realFeats)
	if err != nil {
		return nil, err
	}
	t.Rows = append(t.Rows, Row{Model: "data", Sampler: "real", Frames: held.F, Metrics: dm})

	type job struct {
		model  string
		net    sampler.Net
		o      sampler.Options
		frames int
	}
	var jobs []job
	tnet := sampler.NewDiTNet(teacher, 0)
	defer tnet.Free()
	teach := func(k int) job {
		return job{"teacher", tnet, sampler.Options{Method: sampler.Euler, Steps: k, CFG: spec.TeacherCFG, Shift: spec.TeacherShift}, 0}
	}
	if spec.TeacherSteps > 0 {
		jobs = append(jobs, teach(spec.TeacherSteps))
	}
	var snet *sampler.DiTNet
	if student != nil {
		chunk := 0
		if spec.Student.Method == sampler.Stream || spec.StudentCausal {
			chunk = spec.Student.ChunkFrames
		}
		snet = sampler.NewDiTNet(student, chunk)
		defer snet.Free()
	}
	stud := func(k, frames int) job {
		o := spec.Student
		o.Steps, o.Sigmas = k, spec.StudentLists[k]
		return job{"student", snet, o, frames}
	}
	for _, k := range spec.Steps {
		jobs = append(jobs, teach(k))
		if snet != nil {
			jobs = append(jobs, stud(k, 0))
		}
	}
	if snet != nil && spec.LongFrames > 0 && len(spec.Steps) > 0 {
		jobs = append(jobs, stud(spec.Steps[len(spec.Steps)-1], spec.LongFrames))
	}

	for i, j := range jobs {
		if spec.Progress != nil {
			spec.Progress(i, len(jobs), fmt.Sprintf("%s %s %d", j.model, j.o.Method, j.o.Steps))
		}
		lat, nfe, ms, err := Generate(j.net, held, spec.Count, spec.Batch, spec.Seed, j.o, j.frames)
		if err != nil {
			return nil, fmt.Errorf("eval: %s %s %d steps: %w", j.model, j.o.Method, j.o.Steps, err)
		}
		frames := held.F
		if j.frames > 0 {
			frames = j.frames
		}
		if err := Denormalize(lat, spec.Count, held.C, spec.Mean, spec.Std); err != nil {
			return nil, err
		}
		gen, err := DecodeLatents(lat, spec.Count, held.C, frames, held.H, held.W)
		if err != nil {
			return nil, err
		}
		gen.DirFrames = held.F / 2 // the bounce-free half of the training length, also for long videos
		var ref [][]float64
		if frames == held.F {
			ref = realFeats
		}
		m, err := ScoreRef(gen, held.Captions[:spec.Count], ref)
		if err != nil {
			return nil, err
		}
		fps := math.NaN()
		if ms > 0 {
			fps = float64(frames) / (ms / 1000)
		}
		t.Rows = append(t.Rows, Row{Model: j.model, Sampler: string(j.o.Method), Steps: j.o.Steps, Frames: frames,
			NFE: nfe, MsPerVideo: ms, FPS: fps, Metrics: m})
	}
	if spec.Progress != nil {
		spec.Progress(len(jobs), len(jobs), "done")
	}
	return t, nil
}

// Text renders the table for a terminal.
func (t *Table) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "distillation table: %d held-out prompts per row, FD against %d real held-out videos, seed %d\n", t.Count, t.Reference, t.Seed)
	fmt.Fprintf(&b, "%-8s %-12s %5s %6s %5s %8s %8s %9s %10s %10s %9s\n",
		"model", "sampler", "steps", "frames", "NFE", "CondAcc", "FD", "stability", "ms/video", "frames/s", "n")
	for _, r := range t.Rows {
		steps, nfe, ms, fps := "-", "-", "-", "-"
		if r.Model != "data" {
			steps, nfe = fmt.Sprint(r.Steps), fmt.Sprint(r.NFE)
			ms, fps = fmt.Sprintf("%.1f", r.MsPerVideo), fmt.Sprintf("%.1f", r.FPS)
		}
		fd := "-"
		if !math.IsNaN(r.FD) {
			fd = fmt.Sprintf("%.3f", r.FD)
		}
		fmt.Fprintf(&b, "%-8s %-12s %5s %6d %5s %8.3f %8s %9.4f %10s %10s %9d\n",
			r.Model, r.Sampler, steps, r.Frames, nfe, r.CondAcc, fd, r.Stability, ms, fps, r.N)
	}
	return b.String()
}

// JSON renders the table (NaN → null).
func (t *Table) JSON() ([]byte, error) {
	type jrow struct {
		Row
		FD  *float64 `json:"fd"`
		FPS *float64 `json:"fps"`
	}
	rows := make([]jrow, len(t.Rows))
	for i, r := range t.Rows {
		rows[i].Row = r
		if !math.IsNaN(r.FD) {
			v := r.FD
			rows[i].FD = &v
		}
		if !math.IsNaN(r.FPS) {
			v := r.FPS
			rows[i].FPS = &v
		}
	}
	return json.MarshalIndent(struct {
		Count     int    `json:"count"`
		Reference int    `json:"reference"`
		Seed      int64  `json:"seed"`
		Rows      []jrow `json:"rows"`
	}{t.Count, t.Reference, t.Seed, rows}, "", "  ")
}
