package eval

import (
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/sampler"
	"gonum.org/v1/gonum/stat"
)

func synthSet(t *testing.T, n, frames, size, textDim, textLen int) *Set {
	t.Helper()
	s, _ := synthSetPath(t, n, frames, size, textDim, textLen)
	return s
}

func synthSetPath(t *testing.T, n, frames, size, textDim, textLen int) (*Set, string) {
	t.Helper()
	dir := t.TempDir()
	files, err := data.WriteSynth(dir, data.SynthOptions{Count: 1, Heldout: n, Frames: frames, Size: size, TextDim: textDim, Seed: 5}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := LoadSet(files.Heldout, textLen)
	if err != nil {
		t.Fatal(err)
	}
	return s, files.Heldout
}

// LoadSet gives back exactly what the synthetic generator wrote.
func TestLoadSet(t *testing.T) {
	s, path := synthSetPath(t, 5, 4, 16, 8, 6)
	if s.N != 5 || s.C != 48 || s.F != 4 || s.H != 4 || s.W != 4 || s.TextDim != 8 || s.L != 6 {
		t.Fatalf("set %+v", *s)
	}
	o := data.SynthOptions{Frames: 4, Size: 16, TextDim: 8, Seed: 5}
	per := 48 * 4 * 4 * 4
	for i := 0; i < 5; i++ {
		_, caption, ts := data.SynthRow(o, "heldout", i)
		want := make([]float32, per)
		data.DecodeInto(want, ts[0].Bytes, ts[0].DType, nil, nil)
		for j, v := range want {
			if s.Latents[i*per+j] != v {
				t.Fatalf("row %d latent %d: %g, want %g", i, j, s.Latents[i*per+j], v)
			}
		}
		emb := data.EncodeText(caption, 8, 6)
		for j, v := range emb {
			if s.Text[i*48+j] != v {
				t.Fatalf("row %d text %d: %g, want %g", i, j, s.Text[i*48+j], v)
			}
		}
		if s.Captions[i] != caption {
			t.Fatalf("row %d caption %q, want %q", i, s.Captions[i], caption)
		}
	}
	if _, err := LoadSet(filepath.Join(t.TempDir(), "none.arrow"), 6); err == nil {
		t.Fatal("missing file: no error")
	}
	if _, err := LoadSet(path, 2); err == nil {
		t.Fatal("text_len shorter than the captions: no error")
	}
}

// tinyDiT is an untrained tiny-preset DiT for the synthetic latents (48 channels) and these text
// sizes, its weights drawn from seed.
func tinyDiT(seed int64, textDim, textLen int) *models.DiT {
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = 48, 48, textDim, textLen
	m := models.New(kernels.CPU(), cfg, false)
	m.InitRandom(seed, 0.02)
	return m
}

// The whole table on tiny untrained models: its rows, NFE accounting, real-data row, JSON.
func TestDistillTableRuns(t *testing.T) {
	const textDim, textLen = 8, 6
	s := synthSet(t, 6, 4, 16, textDim, textLen)
	teacher, student := tinyDiT(1, textDim, textLen), tinyDiT(2, textDim, textLen)
	spec := TableSpec{
		Steps: []int{1, 2}, TeacherSteps: 3, TeacherCFG: 3, TeacherShift: 2,
		Student: sampler.Options{Method: sampler.Stream, ChunkFrames: 2},
		Count:   4, Batch: 3, Seed: 9, LongFrames: 8,
	}
	tab, err := DistillTable(teacher, student, s, spec)
	if err != nil {
		t.Fatal(err)
	}
	txt := tab.Text()
	t.Log("\n" + txt)
	// data, teacher 3 at w 1 and 3, (teacher k at w 1 and 3, student k) × 2, long student
	if len(tab.Rows) != 10 {
		t.Fatalf("%d rows:\n%s", len(tab.Rows), txt)
	}
	d := tab.Rows[0]
	if d.Model != "data" || d.CondAcc != 1 || d.N != 4 {
		t.Fatalf("data row %+v", d)
	}
	// teacher 3 steps: 3 unguided, 3·2 guided; t1 1, 2; s1 2 chunks·1 + 1 re-encode; t2 2, 4;
	// s2 2·2+1; long 4 chunks·2+3
	wantNFE := []int{3, 6, 1, 2, 3, 2, 4, 5, 11}
	wantW := []float64{1, 3, 1, 3, 1, 1, 3, 1, 1}
	for i, r := range tab.Rows[1:] {
		if r.NFE != wantNFE[i] || r.CFG != wantW[i] || r.N != 4 || r.MsPerVideo <= 0 || r.Seeds != 1 || r.FDStd != 0 && !math.IsNaN(r.FDStd) {
			t.Fatalf("row %d %+v: NFE want %d, w %g", i+1, r, wantNFE[i], wantW[i])
		}
	}
	if long := tab.Rows[9]; long.Frames != 8 || !math.IsNaN(long.FD) || long.Drift == nil || long.Drift.Ref != 4 || len(long.Drift.Size) != 8 {
		t.Fatalf("long row %+v", long)
	}
	for _, r := range tab.Rows[:9] {
		if r.Drift != nil {
			t.Fatalf("row %s %d has a frame drift", r.Model, r.Steps)
		}
	}
	if math.IsNaN(tab.Rows[1].FD) || tab.Rows[1].FD <= tab.Rows[0].FD {
		t.Fatalf("an untrained teacher's FD %g should exceed the data floor %g", tab.Rows[1].FD, tab.Rows[0].FD)
	}
	js, err := tab.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		DistillCFG float64          `json:"distill_cfg"`
		Rows       []map[string]any `json:"rows"`
	}
	if err := json.Unmarshal(js, &back); err != nil || len(back.Rows) != 10 || back.Rows[9]["fd"] != nil || back.DistillCFG != 3 {
		t.Fatalf("JSON: %v\n%s", err, js)
	}
	if !strings.Contains(txt, "student  stream") || !strings.Contains(txt, "guidance w = 3") {
		t.Fatalf("text table:\n%s", txt)
	}
}

// Several evaluation seeds: each row's mean and spread are those of the tables made one seed at a
// time (gonum's stat.MeanStdDev over them), labelled students follow the student, and the FD
// blocks are the per-seed blocks' means.
func TestDistillTableSeeds(t *testing.T) {
	const textDim, textLen = 8, 6
	s := synthSet(t, 24, 4, 16, textDim, textLen)
	teacher, s1, s2 := tinyDiT(1, textDim, textLen), tinyDiT(2, textDim, textLen), tinyDiT(3, textDim, textLen)
	spec := TableSpec{Steps: []int{1}, TeacherCFG: 2, Student: sampler.Options{Method: sampler.FewStep},
		Students: []Labeled{{"other", s2}}, Count: 6, Batch: 4, FDBlocks: true}
	seeds := []int64{3, 8, 21}
	spec.Seeds = seeds
	all, err := DistillTable(teacher, s1, s, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + all.Text())
	var one []*Table
	for _, sd := range seeds {
		sp := spec
		sp.Seeds, sp.Seed, sp.FDBlocks = nil, sd, true
		tab, err := DistillTable(teacher, s1, s, sp)
		if err != nil {
			t.Fatal(err)
		}
		one = append(one, tab)
	}
	labels := []string{"data", "teacher", "teacher", "student", "other"}
	if len(all.Rows) != len(labels) || all.Reference != 18 {
		t.Fatalf("%d rows, reference %d:\n%s", len(all.Rows), all.Reference, all.Text())
	}
	for i, r := range all.Rows {
		if r.Model != labels[i] {
			t.Fatalf("row %d is %q, want %q", i, r.Model, labels[i])
		}
		if i == 0 {
			continue
		}
		fd, ca := make([]float64, len(seeds)), make([]float64, len(seeds))
		for j, tab := range one {
			if i < 4 {
				fd[j], ca[j] = tab.Rows[i].FD, tab.Rows[i].CondAcc
			} else { // the labelled student: sample it alone
				sp := spec
				sp.Seeds, sp.Seed, sp.Students = nil, seeds[j], nil
				o, err := DistillTable(teacher, s2, s, sp)
				if err != nil {
					t.Fatal(err)
				}
				fd[j], ca[j] = o.Rows[3].FD, o.Rows[3].CondAcc
			}
		}
		wm, ws := stat.MeanStdDev(fd, nil)
		cm, cs := stat.MeanStdDev(ca, nil)
		if r.Seeds != 3 || math.Abs(r.FD-wm) > 1e-9 || math.Abs(r.FDStd-ws) > 1e-9 || math.Abs(r.CondAcc-cm) > 1e-9 || math.Abs(r.CondAccStd-cs) > 1e-9 {
			t.Fatalf("row %d (%s): FD %g ± %g, CondAcc %g ± %g; per-seed tables give %g ± %g, %g ± %g", i, r.Model, r.FD, r.FDStd, r.CondAcc, r.CondAccStd, wm, ws, cm, cs)
		}
		if len(r.FDBlocks) != len(FeatureBlocks(s.F)) {
			t.Fatalf("row %d: %d FD blocks", i, len(r.FDBlocks))
		}
		if i < 4 {
			for b := range r.FDBlocks {
				var per []float64
				for _, tab := range one {
					per = append(per, tab.Rows[i].FDBlocks[b])
				}
				if m := stat.Mean(per, nil); math.Abs(r.FDBlocks[b]-m) > 1e-9 {
					t.Fatalf("row %d block %d: %g, per-seed mean %g", i, b, r.FDBlocks[b], m)
				}
			}
		}
	}
	if r := all.Rows[1]; r.FDStd <= 0 {
		t.Fatalf("three seeds of an untrained teacher should not give identical FDs: %+v", r)
	}
	if txt := all.Text(); !strings.Contains(txt, "±") || !strings.Contains(txt, "FD by feature block") {
		t.Fatalf("text:\n%s", txt)
	}
}

// Denormalize inverts the loader's (x − mean)/std per channel.
func TestDenormalize(t *testing.T) {
	mean, std := []float64{1, -2}, []float64{0.5, 3}
	raw := []float32{1, 2, 3, -4, 5, 6, 7, 8} // [N=2, C=2, 2]
	lat := make([]float32, len(raw))
	for i, v := range raw {
		c := (i / 2) % 2
		lat[i] = float32((float64(v) - mean[c]) / std[c])
	}
	if err := Denormalize(lat, 2, 2, mean, std); err != nil {
		t.Fatal(err)
	}
	for i := range raw {
		if math.Abs(float64(lat[i]-raw[i])) > 1e-6 {
			t.Fatalf("element %d: %g, want %g", i, lat[i], raw[i])
		}
	}
	if err := Denormalize(lat, 2, 2, mean[:1], std); err == nil {
		t.Fatal("1 mean for 2 channels: no error")
	}
}
