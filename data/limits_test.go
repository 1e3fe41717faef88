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
