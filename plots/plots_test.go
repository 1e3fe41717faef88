package plots

import (
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeMetrics writes a metrics.jsonl as the trainer does: a loss falling as 1/step, two roles'
// lr and grad_norm, steps_per_s, a NaN (kept as a string), and validation lines of their own.
func writeMetrics(t *testing.T, dir string) string {
	var b strings.Builder
	for s := 10; s <= 300; s += 10 {
		fmt.Fprintf(&b, `{"step":%d,"elapsed_s":%.3f,"gen_loss":%.6g,"critic_loss":%.6g,"grad_norm/student":%.6g,"grad_norm/critic":"NaN","lr/student":0.0001,"lr/critic":0.0002,"steps_per_s":1.5}`+"\n",
			s, float64(s)/1.5, 10/float64(s), 0.5+0.1*math.Sin(float64(s)), 1+float64(s)/300)
		if s%100 == 0 {
			fmt.Fprintf(&b, `{"step":%d,"elapsed_s":1,"val/cond_acc":%.3f,"val/fd":%.3f}`+"\n", s, 0.5+float64(s)/1000, 2-float64(s)/300)
		}
	}
	p := filepath.Join(dir, "metrics.jsonl")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadAndWrite(t *testing.T) {
	dir := t.TempDir()
	mp := writeMetrics(t, dir)
	s, err := Read(mp)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s["gen_loss"]); n != 30 {
		t.Errorf("gen_loss: %d points, want 30", n)
	}
	if n := len(s["val/fd"]); n != 3 || s["val/fd"][2].Step != 300 {
		t.Errorf("val/fd: %v", s["val/fd"])
	}
	if _, ok := s["grad_norm/critic"]; ok {
		t.Error("NaN strings became a series")
	}
	if _, ok := s["elapsed_s"]; ok {
		t.Error("elapsed_s is a series")
	}
	files, err := Write(mp, filepath.Join(dir, "plots"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]image.Point{ // panels of 450×300 px (3 columns at most) + a 45 px title
		"losses.png": {900, 345}, "grad_norm.png": {450, 345}, "lr.png": {900, 345}, "validation.png": {900, 345}, "other.png": {450, 345},
	}
	if len(files) != len(want) {
		t.Fatalf("wrote %v, want %d figures", files, len(want))
	}
	for _, f := range files {
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(r)
		r.Close()
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		sz := img.Bounds().Size()
		if w := want[filepath.Base(f)]; sz.X < w.X-2 || sz.X > w.X+2 || sz.Y < w.Y-2 || sz.Y > w.Y+2 {
			t.Errorf("%s: %v, want about %v", f, sz, w)
		}
		// something was drawn: the curve's dark blue appears
		dark := 0
		for y := 0; y < sz.Y; y++ {
			for x := 0; x < sz.X; x++ {
				r, g, b, _ := img.At(x, y).RGBA()
				if r>>8 < 0x40 && g>>8 < 0x70 && b>>8 > 0x80 {
					dark++
				}
			}
		}
		if dark < 50 {
			t.Errorf("%s: %d curve pixels", f, dark)
		}
	}
	// a figure whose keys are gone is removed
	os.WriteFile(mp, []byte(`{"step":1,"elapsed_s":0,"loss":1}`+"\n"), 0o644)
	files, err = Write(mp, filepath.Join(dir, "plots"))
	if err != nil || len(files) != 1 {
		t.Fatalf("after rewrite: %v, %v", files, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "plots", "lr.png")); err == nil {
		t.Error("lr.png left behind")
	}
	os.WriteFile(mp, []byte("{not json\n"), 0o644)
	if _, err := Write(mp, dir); err == nil || !strings.Contains(err.Error(), "metrics.jsonl:1") {
		t.Errorf("bad line: %v", err)
	}
}

// A diverged run's metrics (huge, Inf and NaN values) give figures or an error, never a panic
// (gonum/plot panics on some of these ranges; found by trainer's TestDivergenceStops).
func TestDivergedMetricsDoNotPanic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "metrics.jsonl")
	lines := `{"step":1,"elapsed_s":0.1,"loss":1.1382980944357167e+73,"grad_norm/student":6.27e+36}
{"step":2,"elapsed_s":0.2,"loss":1.1382980944357167e+73,"grad_norm/student":"NaN"}
{"step":3,"elapsed_s":0.3,"loss":"+Inf","grad_norm/student":1e308}
`
	if err := os.WriteFile(p, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(p, filepath.Join(dir, "plots")); err != nil {
		t.Logf("error (allowed): %v", err)
	}
}

// A constant lr over 30 logged steps: its panel's y axis spans ±5% of the value, not the moving
// average's float rounding (old: a range of ~1e-19, every tick labelled 0.0002, the line a wiggle).
func TestConstantSeriesAxis(t *testing.T) {
	var pts []Point
	for s := 10; s <= 300; s += 10 {
		pts = append(pts, Point{Step: s, Value: 0.0002})
	}
	for _, c := range []struct {
		pts  []Point
		want float64
	}{{pts, 0.0002 * 0.1}, {[]Point{{Step: 1, Value: 0}, {Step: 2, Value: 0}}, 2}} {
		p, err := panel("lr/critic", c.pts)
		if err != nil {
			t.Fatal(err)
		}
		v := c.pts[0].Value
		if span := p.Y.Max - p.Y.Min; math.Abs(span-c.want) > 1e-12 || p.Y.Min >= v || p.Y.Max <= v {
			t.Errorf("constant %g: y axis [%g, %g], want a span of %g around it", v, p.Y.Min, p.Y.Max, c.want)
		}
	}
	p, err := panel("loss", []Point{{Step: 1, Value: 1}, {Step: 2, Value: 2}})
	if err != nil || p.Y.Min > 1 || p.Y.Max < 2 || p.Y.Max-p.Y.Min > 1.5 {
		t.Errorf("a varying series: y axis [%g, %g], %v", p.Y.Min, p.Y.Max, err)
	}
}
