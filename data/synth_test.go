package data

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// The latent map, checked against a direct transcription of docs/data.md's formula on random pixels.
func TestLatentMapMatchesFormula(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
	F, h, w := 1+rng.IntN(4), 1+rng.IntN(5), 1+rng.IntN(5)
	H, W := 4*h, 4*w
	p := make([]float32, 3*F*H*W)
	for i := range p {
		p[i] = rng.Float32()
	}
	px := func(c, f, y, x int) float32 { return p[((c*F+f)*H+y)*W+x] }
	lat := EncodeLatent(p, F, h, w)
	if len(lat) != 48*F*h*w {
		t.Fatalf("latent has %d values, want %d", len(lat), 48*F*h*w)
	}
	for c := 0; c < 3; c++ {
		for dy := 0; dy < 4; dy++ {
			for dx := 0; dx < 4; dx++ {
				for f := 0; f < F; f++ {
					for y := 0; y < h; y++ {
						for x := 0; x < w; x++ {
							want := 2*px(c, f, 4*y+dy, 4*x+dx) - 1
							if got := lat[(((c*16+dy*4+dx)*F+f)*h+y)*w+x]; got != want {
								t.Fatalf("latent[%d,%d,%d,%d] = %v, want %v", c*16+dy*4+dx, f, y, x, got, want)
							}
						}
					}
				}
			}
		}
	}
	back := DecodeLatent(lat, F, h, w)
	for i := range p {
		if math.Abs(float64(back[i]-p[i])) > 1e-7 {
			t.Fatalf("DecodeLatent(EncodeLatent(p))[%d] = %v, want %v", i, back[i], p[i])
		}
	}
	// out-of-range latents clamp
	for _, v := range []float32{3, -3} {
		for i := range lat {
			lat[i] = v
		}
		for _, x := range DecodeLatent(lat, F, h, w) {
			if x != max(0, min(1, (v+1)/2)) {
				t.Fatalf("latent %v decodes to %v, want it clamped", v, x)
			}
		}
	}
}

func TestCaptions(t *testing.T) {
	for _, c := range Colours {
		for _, s := range Shapes {
			for _, d := range Directions {
				col, sh, dir, err := ParseCaption(Caption(c.Name, s, d.Name))
				if err != nil || col != c.Name || sh != s || dir != d.Name {
					t.Fatalf("ParseCaption(Caption(%s,%s,%s)) = %s %s %s %v", c.Name, s, d.Name, col, sh, dir, err)
				}
			}
		}
	}
	for _, bad := range []string{"", "a red disk", "a purple disk moving up", "a red cube moving up", "a red disk moving sideways", "the red disk moving up"} {
		if _, _, _, err := ParseCaption(bad); err == nil {
			t.Errorf("ParseCaption(%q): no error", bad)
		}
	}
}

func TestEncodeText(t *testing.T) {
	const D, L = 16, 8
	e := EncodeText("a red disk moving up-left", D, L)
	if len(e) != L*D {
		t.Fatalf("len %d", len(e))
	}
	for i, w := range []string{"a", "red", "disk", "moving", "up-left"} {
		v := WordVector(w, D)
		for k := 0; k < D; k++ {
			if e[i*D+k] != v[k] {
				t.Fatalf("token %d (%s) differs from its word vector", i, w)
			}
		}
	}
	for _, x := range e[5*D:] {
		if x != 0 {
			t.Fatal("padding not zero")
		}
	}
	for _, x := range EncodeText("", D, L) {
		if x != 0 {
			t.Fatal("null embedding not zero")
		}
	}
	// distinct words get nearly orthogonal vectors; a word's prefix does not depend on text_dim
	a, b := WordVector("red", 256), WordVector("green", 256)
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i] * b[i])
		na += float64(a[i] * a[i])
		nb += float64(b[i] * b[i])
	}
	if cos := dot / math.Sqrt(na*nb); math.Abs(cos) > 0.3 {
		t.Errorf("cos(red, green) = %.3f", cos)
	}
	if WordVector("red", 8)[7] != a[7] {
		t.Error("prefix changes with text_dim")
	}
	// truncation at textLen
	if got := EncodeText("a b c d e f g h i j", 4, 3); len(got) != 12 {
		t.Fatal(len(got))
	}
}

// The rendered video: the object's colour dominates, its centre of mass follows the recorded
// track, and it moves in the caption's direction over the first half.
func TestSynthVideo(t *testing.T) {
	const F, S = 8, 32
	for i := 0; i < 50; i++ {
		v := SynthVideo(7, "train", i, F, S)
		col, _ := ColourByName(v.Colour)
		dir, _ := DirectionByName(v.Direction)
		if v.Caption != Caption(v.Colour, v.Shape, v.Direction) {
			t.Fatal(v.Caption)
		}
		if v.ObjSize < 8 || v.ObjSize > 10 {
			t.Fatalf("object size %.2f", v.ObjSize)
		}
		for f := 0; f < F; f++ {
			// centre of mass of "object-ness" = distance from the background colour
			var m, mx, my float64
			for y := 0; y < S; y++ {
				for x := 0; x < S; x++ {
					r := v.Pixels[((0*F+f)*S+y)*S+x]
					a := float64((r - Background.R) / (col.R - Background.R + 1e-9))
					if math.Abs(float64(col.R-Background.R)) < 0.3 {
						g := v.Pixels[((1*F+f)*S+y)*S+x]
						a = float64((g - Background.G) / (col.G - Background.G))
					}
					m += a
					mx += a * (float64(x) + 0.5)
					my += a * (float64(y) + 0.5)
				}
			}
			cx, cy := mx/m, my/m
			if math.Abs(cx-v.CX[f]) > 0.6 || math.Abs(cy-v.CY[f]) > 0.6 {
				t.Fatalf("video %d frame %d: centre of mass (%.2f,%.2f), track (%.2f,%.2f)", i, f, cx, cy, v.CX[f], v.CY[f])
			}
		}
		dx, dy := v.CX[F/2]-v.CX[0], v.CY[F/2]-v.CY[0]
		n := math.Hypot(dx, dy)
		if (dx*dir.DX+dy*dir.DY)/n < 0.99 {
			t.Fatalf("video %d (%s): first-half motion (%.2f,%.2f)", i, v.Direction, dx, dy)
		}
		for f := range v.CX {
			h := v.ObjSize / 2
			if v.CX[f] < h-1e-9 || v.CX[f] > S-h+1e-9 || v.CY[f] < h-1e-9 || v.CY[f] > S-h+1e-9 {
				t.Fatalf("video %d frame %d leaves the frame", i, f)
			}
		}
	}
	a, b := SynthVideo(1, "train", 3, F, S), SynthVideo(1, "heldout", 3, F, S)
	if a.Caption == b.Caption && a.CX[0] == b.CX[0] {
		t.Fatal("splits share their random streams")
	}
}

// Same options, byte-identical files; the rows decode back to the rendered videos.
func TestWriteSynthDeterministic(t *testing.T) {
	o := SynthOptions{Count: 40, Heldout: 9, Frames: 4, Size: 16, TextDim: 8, Seed: 3}
	d1, d2 := t.TempDir(), t.TempDir()
	p1, err := WriteSynth(d1, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := WriteSynth(d2, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{p1.Train, p2.Train}, {p1.Heldout, p2.Heldout}, {p1.Meta, p2.Meta}} {
		a, _ := os.ReadFile(pair[0])
		b, _ := os.ReadFile(pair[1])
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Fatalf("%s and %s differ", pair[0], pair[1])
		}
	}
	o.Seed = 4
	p3, _ := WriteSynth(filepath.Join(t.TempDir(), "x"), o, nil)
	a, _ := os.ReadFile(p1.Train)
	b, _ := os.ReadFile(p3.Train)
	if bytes.Equal(a, b) {
		t.Fatal("different seeds, same file")
	}
	if !strings.HasSuffix(p1.Train, "train.arrow") {
		t.Fatal(p1.Train)
	}
}

func TestHalfConversions(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 2))
	for i := 0; i < 100000; i++ {
		x := float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(8)-4)))
		// bf16: relative error ≤ 2^-8 (half an ulp of an 8-bit significand)
		if y := BF16ToF32(BF16(x)); math.Abs(float64(y-x)) > math.Abs(float64(x))/256 {
			t.Fatalf("bf16(%g) = %g", x, y)
		}
		if math.Abs(float64(x)) > 6.2e-5 && math.Abs(float64(x)) < 65000 {
			if y := F16ToF32(F16(x)); math.Abs(float64(y-x)) > math.Abs(float64(x))/2048 {
				t.Fatalf("f16(%g) = %g", x, y)
			}
		}
	}
	// every half value round-trips exactly (independent of rounding: exact representables)
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32(uint16(h))
		if f != f {
			continue
		}
		if F16(f) != uint16(h) {
			t.Fatalf("F16(F16ToF32(%#04x)=%g) = %#04x", h, f, F16(f))
		}
		if BF16(BF16ToF32(uint16(h))) != uint16(h) && BF16ToF32(uint16(h)) == BF16ToF32(uint16(h)) {
			t.Fatalf("bf16 %#04x", h)
		}
	}
	// DecodeInto on encoded tensors
	v := []float32{1.5, -2.25, 0.1, 1000}
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16, kernels.F16} {
		out := make([]float32, len(v))
		DecodeInto(out, EncodeTensor(v, dt), dt, nil, nil)
		for i := range v {
			if math.Abs(float64(out[i]-v[i])) > math.Abs(float64(v[i]))/256 {
				t.Fatalf("%s: %v -> %v", dt, v, out)
			}
		}
	}
}
