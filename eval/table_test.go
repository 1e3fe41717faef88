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

// The whole table on tiny untrained models: its rows, NFE accounting, real-data row, JSON.
func TestDistillTableRuns(t *testing.T) {
	const textDim, textLen = 8, 6
	s := synthSet(t, 6, 4, 16, textDim, textLen)
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = 48, 48, textDim, textLen
	teacher := models.New(kernels.CPU(), cfg, false)
	teacher.InitRandom(1, 0.02)
	student := models.New(kernels.CPU(), cfg, false)
	student.InitRandom(2, 0.02)
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
	// data, teacher 3, (teacher k, student k) × 2, long student
	if len(tab.Rows) != 7 {
		t.Fatalf("%d rows:\n%s", len(tab.Rows), txt)
	}
	d := tab.Rows[0]
	if d.Model != "data" || d.CondAcc != 1 || d.N != 4 {
		t.Fatalf("data row %+v", d)
	}
	wantNFE := []int{6, 2, 3, 4, 5, 11} // teacher 3·2; t1 2, s1 2 chunks·1 + 1 re-encode; t2 4; s2 2·2+1; long 4 chunks·2+3
	for i, r := range tab.Rows[1:] {
		if r.NFE != wantNFE[i] || r.N != 4 || r.MsPerVideo <= 0 {
			t.Fatalf("row %d %+v: NFE want %d", i+1, r, wantNFE[i])
		}
	}
	if long := tab.Rows[6]; long.Frames != 8 || !math.IsNaN(long.FD) {
		t.Fatalf("long row %+v", long)
	}
	if math.IsNaN(tab.Rows[1].FD) || tab.Rows[1].FD <= tab.Rows[0].FD {
		t.Fatalf("an untrained teacher's FD %g should exceed the data floor %g", tab.Rows[1].FD, tab.Rows[0].FD)
	}
	js, err := tab.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Rows []map[string]any `json:"rows"`
	}
	if err := json.Unmarshal(js, &back); err != nil || len(back.Rows) != 7 || back.Rows[6]["fd"] != nil {
		t.Fatalf("JSON: %v\n%s", err, js)
	}
	if !strings.Contains(txt, "student  stream") {
		t.Fatalf("text table:\n%s", txt)
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
