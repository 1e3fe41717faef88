// Package plots draws a run's training curves: metrics.jsonl (trainer/metrics.go, every key in
// docs/metrics.md) as PNG figures in the run folder, one panel per key:
//
//	plots/losses.png      every key with "loss" in its name (loss, gen_loss, critic_loss, reg_loss, ...)
//	plots/grad_norm.png   grad_norm/<role>: each role's gradient norm before clipping
//	plots/lr.png          lr/<role>: each role's learning rate
//	plots/validation.png  val/*: the validation metrics (val/cond_acc, val/fd, ...)
//	plots/other.png       everything else (steps_per_s, dmd_grad_abs, ...)
//
// The trainer refreshes them at every checkpoint and validation; `fewstep plot RUN` draws them on
// demand. Rendering is gonum.org/v1/plot.
package plots

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Point is one logged value of a key.
type Point struct {
	Step  int
	Value float64
}

// Read parses metrics.jsonl into one series per key, in step order. Values that are not numbers
// ("NaN", "+Inf", written as strings) are left out; step and elapsed_s are not series.
func Read(path string) (map[string][]Point, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]Point{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		st, ok := rec["step"].(float64)
		if !ok {
			return nil, fmt.Errorf("%s:%d: no step", path, line)
		}
		for k, v := range rec {
			x, ok := v.(float64)
			if !ok || k == "step" || k == "elapsed_s" {
				continue
			}
			out[k] = append(out[k], Point{Step: int(st), Value: x})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, s := range out {
		sort.SliceStable(s, func(i, j int) bool { return s[i].Step < s[j].Step })
	}
	return out, nil
}

// Figures are the PNG files Write makes, in order, and the keys each holds.
var Figures = []struct {
	Name  string
	Title string
	Match func(key string) bool
}{
	{"losses", "losses", func(k string) bool { return strings.Contains(k, "loss") && !strings.Contains(k, "/") }},
	{"grad_norm", "gradient norm before clipping, per role", func(k string) bool { return strings.HasPrefix(k, "grad_norm/") }},
	{"lr", "learning rate, per role", func(k string) bool { return strings.HasPrefix(k, "lr/") }},
	{"validation", "validation (the student, or its EMA, on held-out prompts)", func(k string) bool { return strings.HasPrefix(k, "val/") }},
	{"other", "other metrics", nil},
}

// Write draws the figures of the run whose metrics.jsonl is at metricsPath into dir (created) and
// returns the files written; a figure with no key is not written (and an old one is removed).
func Write(metricsPath, dir string) ([]string, error) {
	series, err := Read(metricsPath)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(series))
	for k := range series {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	taken := map[string]bool{}
	var files []string
	for _, fig := range Figures {
		var ks []string
		for _, k := range keys {
			if !taken[k] && (fig.Match == nil || fig.Match(k)) {
				ks = append(ks, k)
				taken[k] = true
			}
		}
		p := filepath.Join(dir, fig.Name+".png")
		if len(ks) == 0 {
			os.Remove(p)
			continue
		}
		if err := writeFigure(p, fig.Title, ks, series); err != nil {
			return files, fmt.Errorf("plots: %s: %w", p, err)
		}
		files = append(files, p)
	}
	return files, nil
}

// writeFigure tiles one panel per key (up to 3 columns), 4.5 × 3 inches each, at 100 dpi.
func writeFigure(path, title string, keys []string, series map[string][]Point) (err error) {
	defer func() { // gonum/plot panics on some ranges (a diverged run's 1e73 loss): an error, not a crash
		if r := recover(); r != nil {
			err = fmt.Errorf("drawing %s: %v", strings.Join(keys, ", "), r)
		}
	}()
	cols := min(len(keys), 3)
	rows := (len(keys) + cols - 1) / cols
	plots := make([][]*plot.Plot, rows)
	for i := range plots {
		plots[i] = make([]*plot.Plot, cols)
	}
	for i, k := range keys {
		p, err := panel(k, series[k])
		if err != nil {
			return err
		}
		plots[i/cols][i%cols] = p
	}
	const panelW, panelH = 4.5 * vg.Inch, 3 * vg.Inch
	titleH := 0.45 * vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(vg.Length(cols)*panelW, vg.Length(rows)*panelH+titleH), vgimg.UseDPI(100))
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	head := plot.New()
	head.Title.Text = title
	head.Title.TextStyle.Font.Size = vg.Points(13)
	head.Title.TextStyle.XAlign, head.Title.TextStyle.YAlign = draw.XCenter, draw.YCenter
	dc.FillText(head.Title.TextStyle, vg.Point{X: dc.Center().X, Y: dc.Max.Y - titleH/2}, title)
	body := dc
	body.Max.Y -= titleH
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 2, PadY: vg.Millimeter * 2,
		PadTop: vg.Millimeter, PadBottom: vg.Millimeter, PadLeft: vg.Millimeter, PadRight: vg.Millimeter}
	cs := plot.Align(plots, tiles, body)
	for r := range plots {
		for c, p := range plots[r] {
			if p != nil {
				p.Draw(cs[r][c])
			}
		}
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

var (
	rawColour    = color.RGBA{R: 0x9e, G: 0xc5, B: 0xe8, A: 0xff} // light blue: every logged value
	smoothColour = color.RGBA{R: 0x1f, G: 0x4e, B: 0x9c, A: 0xff} // dark blue: exponential moving average
	lastColour   = color.RGBA{R: 0xc0, G: 0x30, B: 0x30, A: 0xff}
)

// panel plots one key against the step: every logged value, and with more than 20 points their
// exponential moving average (weight 0.9, bias-corrected); a log y axis when every value is positive
// and they span more than two decades.
func panel(key string, pts []Point) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = key
	p.X.Label.Text = "step"
	p.Add(plotter.NewGrid())
	xy := make(plotter.XYs, len(pts))
	lo, hi := math.Inf(1), math.Inf(-1)
	for i, q := range pts {
		xy[i].X, xy[i].Y = float64(q.Step), q.Value
		lo, hi = math.Min(lo, q.Value), math.Max(hi, q.Value)
	}
	if lo > 0 && hi/lo > 100 {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if len(xy) == 1 { // one point: a marker, not a line
		s, err := plotter.NewScatter(xy)
		if err != nil {
			return nil, err
		}
		s.GlyphStyle.Color, s.GlyphStyle.Radius = lastColour, vg.Points(3)
		p.Add(s)
	} else {
		raw, err := plotter.NewLine(xy)
		if err != nil {
			return nil, err
		}
		raw.LineStyle.Color, raw.LineStyle.Width = rawColour, vg.Points(1)
		if len(xy) <= 20 { // few points (validation): each one marked
			raw.LineStyle.Color = smoothColour
			s, err := plotter.NewScatter(xy)
			if err != nil {
				return nil, err
			}
			s.GlyphStyle.Color, s.GlyphStyle.Radius = smoothColour, vg.Points(2.5)
			p.Add(s)
		}
		p.Add(raw)
		if len(xy) > 20 {
			sm := make(plotter.XYs, len(xy))
			var m, w float64
			for i := range xy {
				m = 0.9*m + 0.1*xy[i].Y
				w = 0.9*w + 0.1
				sm[i].X, sm[i].Y = xy[i].X, m/w
			}
			l, err := plotter.NewLine(sm)
			if err != nil {
				return nil, err
			}
			l.LineStyle.Color, l.LineStyle.Width = smoothColour, vg.Points(1.5)
			p.Add(l)
		}
	}
	// A constant series (a constant lr): the axis spans ±5% of the value. Autoscaled, it spanned the
	// moving average's rounding (1e-19 around 0.0002), drawn as a wiggle under ticks that all read 0.0002.
	if scale := math.Max(math.Abs(lo), math.Abs(hi)); !math.IsInf(scale, 0) && !math.IsNaN(scale) && hi-lo <= 1e-9*scale {
		d := 0.05 * scale
		if d == 0 {
			d = 1
		}
		p.Y.Min, p.Y.Max = lo-d, hi+d
	}
	last := pts[len(pts)-1]
	p.Legend.Add(fmt.Sprintf("last %.4g at step %d", last.Value, last.Step))
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	return p, nil
}
