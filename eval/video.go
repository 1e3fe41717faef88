package eval

import (
	"math"

	"github.com/fewstep/fewstep/data"
)

// Analysis of one decoded synthetic video, measured from its pixels only (no learned model).
//
// The object is found against the dataset's known dark background (data.Background):
//  1. candidate pixels: max_c |p_c − bg_c| > 0.3; their mean colour c1;
//  2. core pixels: those whose coverage along c1 is > 0.75, their mean c2; the object colour c is
//     the mean of the pixels whose coverage along c2 is > 0.9;
//  3. coverage of every pixel a = clamp((p − bg)·(c − bg) / |c − bg|², 0, 1) — exact for the
//     dataset's anti-aliased renderer, whose pixels are bg·(1−a) + c·a; pixels with a < 0.05 count 0.
//
// Per frame: area = Σ a (pixels), centre of mass = Σ a·(x+½, y+½) / Σ a, colour = mean of the fully
// covered pixels (a > 0.9). The dominant colour is the palette colour nearest to c. The motion direction is
// the least-squares velocity of the centre over the first half of the video (frames 0..⌊F/2⌋, the
// part the dataset keeps free of bounces), classified into the 8 directions by its angle (45°
// sectors); a video whose centre moves less than 0.25 px per frame has no direction.
type Analysis struct {
	Found     bool       // an object was seen in at least two frames
	Colour    [3]float64 // object colour c
	Nearest   string     // nearest palette colour name
	Direction string     // one of data.Directions' names, or "" (no motion / no object)
	VX, VY    float64    // first-half velocity, px per frame (y down)
	Area      []float64  // [F] object area in pixels
	CX, CY    []float64  // [F] centre of mass (NaN where the frame has no object)
	FrameRGB  [][3]float64
}

const (
	candThresh  = 0.3
	coreThresh  = 0.75
	frameThresh = 0.9
	coverFloor  = 0.05
	minSpeedPx  = 0.25
)

// Analyze measures pix [3, F, H, W] in [0, 1], the direction over frames 0..⌊F/2⌋.
func Analyze(pix []float32, F, H, W int) Analysis { return AnalyzeDir(pix, F, H, W, F/2) }

// AnalyzeDir is Analyze with the direction measured over frames 0..last (last ≥ 1): for a video
// longer than the training length, the training length's first half (the bounce-free part).
func AnalyzeDir(pix []float32, F, H, W, last int) Analysis {
	bg := [3]float64{float64(data.Background.R), float64(data.Background.G), float64(data.Background.B)}
	plane := H * W
	at := func(c, f, i int) float64 { return float64(pix[(c*F+f)*plane+i]) }
	an := Analysis{Area: make([]float64, F), CX: make([]float64, F), CY: make([]float64, F), FrameRGB: make([][3]float64, F)}

	// 1. candidates and their mean colour
	var c1 [3]float64
	n1 := 0
	for f := 0; f < F; f++ {
		for i := 0; i < plane; i++ {
			d := 0.0
			for c := 0; c < 3; c++ {
				d = math.Max(d, math.Abs(at(c, f, i)-bg[c]))
			}
			if d > candThresh {
				for c := 0; c < 3; c++ {
					c1[c] += at(c, f, i)
				}
				n1++
			}
		}
	}
	if n1 == 0 {
		for f := range an.CX {
			an.CX[f], an.CY[f] = math.NaN(), math.NaN()
		}
		return an
	}
	for c := range c1 {
		c1[c] /= float64(n1)
	}
	cover := func(f, i int, col [3]float64) float64 {
		num, den := 0.0, 0.0
		for c := 0; c < 3; c++ {
			num += (at(c, f, i) - bg[c]) * (col[c] - bg[c])
			den += (col[c] - bg[c]) * (col[c] - bg[c])
		}
		if den == 0 {
			return 0
		}
		return math.Min(math.Max(num/den, 0), 1)
	}
	// 2. core pixels → object colour, refined once (c1 is pulled toward the background by edges)
	col := c1
	for _, th := range []float64{coreThresh, frameThresh} {
		var next [3]float64
		nc := 0
		for f := 0; f < F; f++ {
			for i := 0; i < plane; i++ {
				if cover(f, i, col) > th {
					for c := 0; c < 3; c++ {
						next[c] += at(c, f, i)
					}
					nc++
				}
			}
		}
		if nc == 0 {
			break
		}
		for c := range next {
			col[c] = next[c] / float64(nc)
		}
	}
	an.Colour = col
	an.Nearest = nearestColour(col)

	// 3. coverage → area, centre, per-frame colour
	seen := 0
	for f := 0; f < F; f++ {
		var sa, sx, sy float64
		var rgb [3]float64
		ncore := 0
		for i := 0; i < plane; i++ {
			a := cover(f, i, col)
			if a < coverFloor {
				continue
			}
			x, y := float64(i%W)+0.5, float64(i/W)+0.5
			sa += a
			sx += a * x
			sy += a * y
			if a > frameThresh {
				for c := 0; c < 3; c++ {
					rgb[c] += at(c, f, i)
				}
				ncore++
			}
		}
		an.Area[f] = sa
		if sa > 0 {
			an.CX[f], an.CY[f] = sx/sa, sy/sa
			seen++
		} else {
			an.CX[f], an.CY[f] = math.NaN(), math.NaN()
		}
		if ncore > 0 {
			for c := range rgb {
				rgb[c] /= float64(ncore)
			}
		} else {
			rgb = col
		}
		an.FrameRGB[f] = rgb
	}
	an.Found = seen >= 2

	// direction: least-squares slope of the centre over frames 0..last (at least 0..1)
	last = max(last, 1)
	if last >= F {
		return an
	}
	var sf, sff, sxf, syf, sxs, sys, n float64
	for f := 0; f <= last; f++ {
		if math.IsNaN(an.CX[f]) {
			continue
		}
		t := float64(f)
		sf += t
		sff += t * t
		sxs += an.CX[f]
		sys += an.CY[f]
		sxf += t * an.CX[f]
		syf += t * an.CY[f]
		n++
	}
	den := n*sff - sf*sf
	if n < 2 || den == 0 {
		return an
	}
	an.VX = (n*sxf - sf*sxs) / den
	an.VY = (n*syf - sf*sys) / den
	if math.Hypot(an.VX, an.VY) >= minSpeedPx {
		an.Direction = directionOf(an.VX, an.VY)
	}
	return an
}

// nearestColour is the palette colour nearest (Euclidean RGB) to c.
func nearestColour(c [3]float64) string {
	best, bd := "", math.Inf(1)
	for _, p := range data.Colours {
		d := math.Pow(c[0]-float64(p.R), 2) + math.Pow(c[1]-float64(p.G), 2) + math.Pow(c[2]-float64(p.B), 2)
		if d < bd {
			best, bd = p.Name, d
		}
	}
	return best
}

// directionOf classifies a velocity (y down) into the nearest of the 8 directions by angle.
func directionOf(vx, vy float64) string {
	best, bc := "", math.Inf(-1)
	n := math.Hypot(vx, vy)
	for _, d := range data.Directions {
		cos := (vx*d.DX + vy*d.DY) / (n * math.Hypot(d.DX, d.DY))
		if cos > bc {
			best, bc = d.Name, cos
		}
	}
	return best
}
