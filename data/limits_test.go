package data

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// SynthOptions.Bytes, the estimate WriteSynth checks against the free disk, bounds the files it
// writes from above and is not far above them.
func TestSynthBytesEstimate(t *testing.T) {
	for _, o := range []SynthOptions{
		{Count: 40, Heldout: 8, Frames: 2, Size: 16, TextDim: 4, Seed: 1},
		{Count: 20, Heldout: 0, Frames: 8, Size: 32, TextDim: 32, Seed: 2, DType: kernels.BF16},
	} {
		dir := t.TempDir()
		p, err := WriteSynth(dir, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		var have int64
		for _, f := range []string{p.Train, p.Heldout} {
			if fi, err := os.Stat(f); err == nil {
				have += fi.Size()
			}
		}
		if est := o.Bytes(); have > est || est > 3*have {
			t.Errorf("%+v: files %d bytes, estimate %d", o, have, est)
		}
	}
}

// Sizes beyond the limits, or beyond the free disk, are refused before anything is written, with
// what would have been needed; no temporary file is left.
func TestSynthRefusesHugeSizes(t *testing.T) {
	for _, c := range []struct {
		o    SynthOptions
		want string
	}{
		{SynthOptions{Count: 1 << 30, Frames: 2, Size: 16, TextDim: 4}, "limit"},
		{SynthOptions{Count: 2, Frames: 4096, Size: 4096, TextDim: 4}, "GiB per video"},
		{SynthOptions{Count: 1 << 24, Heldout: 1 << 24, Frames: 64, Size: 256, TextDim: 4}, "free"},
	} {
		dir := filepath.Join(t.TempDir(), "synth")
		_, err := WriteSynth(dir, c.o, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%+v: %v, want an error saying %q", c.o, err, c.want)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("%+v: left %v", c.o, ents)
		}
	}
}

// convert refuses to write over its source: the same path, a symbolic link to it, a hard link to
// it, and a folder converted into itself; the source stays byte for byte.
func TestConvertRefusesItsSource(t *testing.T) {
	src := synthFile(t)
	d, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pq := filepath.Join(dir, "x.parquet")
	writeProjectParquet(t, d, pq)
	d.Close()
	want, _ := os.ReadFile(pq)
	sym, hard := filepath.Join(dir, "sym.parquet"), filepath.Join(dir, "hard.parquet")
	if err := os.Symlink(pq, sym); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(pq, hard); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][2]string{{pq, pq}, {pq, sym}, {sym, pq}, {pq, hard}} {
		_, err := Convert(c[0], c[1])
		if err == nil || !strings.Contains(err.Error(), "overwrite its source") {
			t.Fatalf("convert %s %s: %v", c[0], c[1], err)
		}
		if got, _ := os.ReadFile(pq); string(got) != string(want) {
			t.Fatalf("convert %s %s changed the source", c[0], c[1])
		}
	}
	// A folder into itself: its .arrow file would be rewritten onto itself.
	folder := filepath.Dir(src)
	before, _ := os.ReadFile(src)
	if _, err := Convert(folder, folder); err == nil || !strings.Contains(err.Error(), "overwrite its source") {
		t.Fatalf("convert a folder into itself: %v", err)
	}
	if after, _ := os.ReadFile(src); string(after) != string(before) {
		t.Fatal("convert of a folder into itself changed a source")
	}
	// Another destination works, and leaves no temporary file.
	out := filepath.Join(dir, "out.arrow")
	if _, err := Convert(pq, out); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(m) != 0 {
		t.Fatalf("left %v", m)
	}
}
