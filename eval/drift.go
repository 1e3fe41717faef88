package eval

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"

	"github.com/fewstep/fewstep/data"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// FrameDrift is how a set of (long, streamed) videos holds its object frame by frame, each value the
// mean over the videos. Each frame is measured on its own: its object is the pixels that differ from
// the background by more than 0.3 in some channel, area_f their count, rgb_f their mean colour.
//
//	Size[f]      |area_f − ā| / ā, ā the object's mean area over the first Ref frames
//	             (1 where frame f has no object)
//	Colour[f]    ‖rgb_f − c̄‖ (RGB in [0, 1]), c̄ the mean object colour over the first Ref frames
//	             (over the videos whose frame f has an object)
//	ColourAcc[f] the fraction of videos whose frame-f object has the caption's colour
//
// Ref is the training length: the drift of frame f says how far the video has moved from what it
// was while the student was on familiar ground. A video with no object in its first Ref frames
// counts drift 1 and colour wrong at every frame.
type FrameDrift struct {
	Ref       int       `json:"ref"`
	Size      []float64 `json:"size"`
	Colour    []float64 `json:"colour"`
	ColourAcc []float64 `json:"colour_acc"`
}

// MeasureFrameDrift measures FrameDrift of videos against their captions.
func MeasureFrameDrift(v Videos, captions []string, ref int) (FrameDrift, error) {
	N, F := len(v.Pix), v.F
	if N == 0 || len(captions) != N {
		return FrameDrift{}, fmt.Errorf("eval: frame drift of %d videos with %d captions", N, len(captions))
	}
	if ref < 1 || ref > F {
		return FrameDrift{}, fmt.Errorf("eval: frame drift reference of %d frames for videos of %d", ref, F)
	}
	d := FrameDrift{Ref: ref, Size: make([]float64, F), Colour: make([]float64, F), ColourAcc: make([]float64, F)}
	nCol := make([]float64, F)
	for i := range v.Pix {
		colour, _, _, err := data.ParseCaption(captions[i])
		if err != nil {
			return FrameDrift{}, fmt.Errorf("eval: video %d: %w", i, err)
		}
		area, rgbs := frameObjects(v.Pix[i], F, v.H*v.W)
		var abar float64
		var cbar [3]float64
		nref := 0.0
		for f := 0; f < ref; f++ {
			if area[f] > 0 {
				abar += area[f]
				for c := range cbar {
					cbar[c] += rgbs[f][c]
				}
				nref++
			}
		}
		for f := 0; f < F; f++ {
			if nref == 0 || area[f] <= 0 {
				d.Size[f]++
				continue
			}
			d.Size[f] += math.Abs(area[f]-abar/nref) / (abar / nref)
			rgb := rgbs[f]
			d.Colour[f] += math.Sqrt(sq(rgb[0]-cbar[0]/nref) + sq(rgb[1]-cbar[1]/nref) + sq(rgb[2]-cbar[2]/nref))
			nCol[f]++
			if nearestColour(rgb) == colour {
				d.ColourAcc[f]++
			}
		}
	}
	for f := 0; f < F; f++ {
		d.Size[f] /= float64(N)
		d.ColourAcc[f] /= float64(N)
		if nCol[f] > 0 {
			d.Colour[f] /= nCol[f]
		} else {
			d.Colour[f] = math.NaN()
		}
	}
	return d, nil
}

func sq(x float64) float64 { return x * x }

// frameObjects is each frame's object on its own: the count of pixels of pix [3, F, plane] that
// differ from the background by more than 0.3 in some channel, and their mean colour.
func frameObjects(pix []float32, F, plane int) ([]float64, [][3]float64) {
	bg := [3]float64{float64(data.Background.R), float64(data.Background.G), float64(data.Background.B)}
	area, rgb := make([]float64, F), make([][3]float64, F)
	for f := 0; f < F; f++ {
		for i := 0; i < plane; i++ {
			var p [3]float64
			fg := false
			for c := 0; c < 3; c++ {
				p[c] = float64(pix[(c*F+f)*plane+i])
				fg = fg || math.Abs(p[c]-bg[c]) > 0.3
			}
			if fg {
				area[f]++
				for c := range p {
					rgb[f][c] += p[c]
				}
			}
		}
		if area[f] > 0 {
			for c := range rgb[f] {
				rgb[f][c] /= area[f]
			}
		}
	}
	return area, rgb
}

// WriteDriftPNG plots FrameDrift curves against the frame index (one line per named series and
// quantity: size drift, colour drift, colour accuracy), with a mark at the training length.
func WriteDriftPNG(path, title string, names []string, drifts []FrameDrift) error {
	if len(names) != len(drifts) || len(drifts) == 0 {
		return fmt.Errorf("eval: drift plot of %d names and %d series", len(names), len(drifts))
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "latent frame"
	p.Y.Label.Text = "drift / colour accuracy"
	p.Add(plotter.NewGrid())
	palette := []color.RGBA{{0x1f, 0x4e, 0x9c, 0xff}, {0xc0, 0x30, 0x30, 0xff}, {0x2e, 0x8b, 0x57, 0xff}, {0x80, 0x50, 0xa0, 0xff}}
	ymax := 1.0
	for i, d := range drifts {
		for q, s := range []struct {
			label string
			ys    []float64
			dash  []vg.Length
		}{{"size drift", d.Size, nil}, {"colour drift", d.Colour, []vg.Length{vg.Points(4), vg.Points(2)}},
			{"colour accuracy", d.ColourAcc, []vg.Length{vg.Points(1), vg.Points(2)}}} {
			xy := make(plotter.XYs, 0, len(s.ys))
			for f, y := range s.ys {
				if !math.IsNaN(y) {
					xy = append(xy, plotter.XY{X: float64(f), Y: y})
					ymax = math.Max(ymax, y)
				}
			}
			l, err := plotter.NewLine(xy)
			if err != nil {
				return err
			}
			l.Color = palette[(i*3+q)%len(palette)]
			if len(drifts) > 1 {
				l.Color = palette[i%len(palette)]
			}
			l.Width = vg.Points(1.5)
			l.Dashes = s.dash
			p.Add(l)
			p.Legend.Add(names[i]+": "+s.label, l)
		}
	}
	ref := drifts[0].Ref
	mark, err := plotter.NewLine(plotter.XYs{{X: float64(ref) - 0.5, Y: 0}, {X: float64(ref) - 0.5, Y: ymax}})
	if err != nil {
		return err
	}
	mark.Color = color.Gray{Y: 0x90}
	mark.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
	p.Add(mark)
	p.Legend.Add(fmt.Sprintf("training length (%d frames)", ref), mark)
	p.Legend.Top = true
	p.Y.Min, p.Y.Max = 0, ymax*1.45 // room for the legend above the curves
	tmp := path + ".part.png"       // Save picks the format by the extension
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// MarshalJSON writes NaN values (a frame without any object) as null.
func (d FrameDrift) MarshalJSON() ([]byte, error) {
	opt := func(xs []float64) []*float64 {
		out := make([]*float64, len(xs))
		for i, x := range xs {
			if !math.IsNaN(x) {
				v := x
				out[i] = &v
			}
		}
		return out
	}
	return json.Marshal(struct {
		Ref       int        `json:"ref"`
		Size      []*float64 `json:"size"`
		Colour    []*float64 `json:"colour"`
		ColourAcc []*float64 `json:"colour_acc"`
	}{d.Ref, opt(d.Size), opt(d.Colour), opt(d.ColourAcc)})
}
