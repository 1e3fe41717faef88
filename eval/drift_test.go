package eval

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/fewstep/fewstep/data"
)

// Real videos hold their object: colour right at every frame, small size and colour drift. Wiping
// the object from the last frames (background only) gives drift 1 and colour accuracy 0 exactly
// there and leaves the frames before as they were; swapping red and blue from a frame on makes the
// swapped colours wrong there.
func TestFrameDrift(t *testing.T) {
	const n, ref = 24, tF / 2
	v, caps, _ := realSet(t, 31, "heldout", 0, n)
	d, err := MeasureFrameDrift(v, caps, ref)
	if err != nil {
		t.Fatal(err)
	}
	for f := 0; f < tF; f++ {
		if d.ColourAcc[f] != 1 || d.Size[f] > 0.1 || d.Colour[f] > 0.05 {
			t.Fatalf("real videos, frame %d: size %g colour %g acc %g", f, d.Size[f], d.Colour[f], d.ColourAcc[f])
		}
	}
	plane := tS * tS
	bg := [3]float32{float32(data.Background.R), float32(data.Background.G), float32(data.Background.B)}
	edit := func(from int, rgb func(c int, p float32) float32) Videos {
		w := Videos{F: tF, H: tS, W: tS}
		for _, p := range v.Pix {
			q := append([]float32(nil), p...)
			for c := 0; c < 3; c++ {
				for f := from; f < tF; f++ {
					for i := (c*tF + f) * plane; i < (c*tF+f+1)*plane; i++ {
						q[i] = rgb(c, q[i])
					}
				}
			}
			w.Pix = append(w.Pix, q)
		}
		return w
	}
	wiped, err := MeasureFrameDrift(edit(6, func(c int, _ float32) float32 { return bg[c] }), caps, ref)
	if err != nil {
		t.Fatal(err)
	}
	for f := 0; f < tF; f++ {
		if f < 6 && (wiped.Size[f] != d.Size[f] || wiped.ColourAcc[f] != 1) || f >= 6 && (wiped.Size[f] != 1 || wiped.ColourAcc[f] != 0 || !math.IsNaN(wiped.Colour[f])) {
			t.Fatalf("wiped from frame 6, frame %d: size %g colour %g acc %g", f, wiped.Size[f], wiped.Colour[f], wiped.ColourAcc[f])
		}
	}
	// swap R and B from frame 5 on: red ↔ blue, yellow ↔ cyan; green and magenta stay
	swapped := edit(5, func(c int, p float32) float32 { return p })
	for _, q := range swapped.Pix {
		for f := 5; f < tF; f++ {
			r, b := q[f*plane:(f+1)*plane], q[(2*tF+f)*plane:(2*tF+f+1)*plane]
			for i := range r {
				r[i], b[i] = b[i], r[i]
			}
		}
	}
	sw, err := MeasureFrameDrift(swapped, caps, ref)
	if err != nil {
		t.Fatal(err)
	}
	changed := 0.0
	for _, c := range caps {
		col, _, _, _ := data.ParseCaption(c)
		if col != "green" && col != "magenta" {
			changed++
		}
	}
	for f := 5; f < tF; f++ {
		if want := 1 - changed/n; math.Abs(sw.ColourAcc[f]-want) > 1e-9 || sw.Colour[f] < 0.3*changed/n {
			t.Fatalf("R↔B from frame 5, frame %d: colour acc %g (want %g), colour drift %g", f, sw.ColourAcc[f], want, sw.Colour[f])
		}
	}
	if _, err := MeasureFrameDrift(v, caps, tF+1); err == nil {
		t.Fatal("reference longer than the videos: no error")
	}
	path := filepath.Join(t.TempDir(), "drift.png")
	if err := WriteDriftPNG(path, "test", []string{"real", "wiped"}, []FrameDrift{d, wiped}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() < 300 {
		t.Fatalf("drift.png: %v %v", err, img)
	}
}
