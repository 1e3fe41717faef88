package data

// The synthetic dataset (docs/data.md): coloured shapes moving in one of 8 directions on a dark
// background, bouncing off the borders; a fixed invertible latent map of the pixels; captions and a
// toy text encoder. Everything here is a pure function of its seeds.

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"
)

// Colour is a named RGB colour in [0, 1].
type Colour struct {
	Name    string
	R, G, B float32
}

// Colours is the palette: six colours far apart in RGB, so the dominant colour of a video is
// unambiguous from its pixels.
var Colours = []Colour{
	{"red", 0.95, 0.15, 0.15},
	{"green", 0.15, 0.85, 0.20},
	{"blue", 0.20, 0.35, 1.00},
	{"yellow", 0.95, 0.90, 0.15},
	{"cyan", 0.15, 0.90, 0.95},
	{"magenta", 0.90, 0.20, 0.90},
}

// Background is the dark background colour.
var Background = Colour{"background", 0.05, 0.05, 0.08}

// Shapes are the object kinds.
var Shapes = []string{"square", "disk", "cross"}

// Direction is a named unit of motion in image coordinates (x right, y DOWN).
type Direction struct {
	Name   string
	DX, DY float64
}

// Directions are the 8 motion directions; diagonals are unit length (DX, DY = ±1/√2).
var Directions = func() []Direction {
	s := 1 / math.Sqrt2
	return []Direction{
		{"right", 1, 0}, {"up-right", s, -s}, {"up", 0, -1}, {"up-left", -s, -s},
		{"left", -1, 0}, {"down-left", -s, s}, {"down", 0, 1}, {"down-right", s, s},
	}
}()

// LatentChannels is the channel count of the synthetic latent space (3 colours × 4×4 pixels).
const LatentChannels = 48

// Synthetic-video geometry, in units of the video size (32 px): objects 8-10 px wide moving
// 2 px per frame.
const (
	objMinFrac = 8.0 / 32
	objMaxFrac = 10.0 / 32
	speedFrac  = 2.0 / 32
)

// Video is one synthetic sample.
type Video struct {
	ID        string
	Caption   string
	Colour    string
	Shape     string
	Direction string
	Frames    int       // F
	Size      int       // S
	Pixels    []float32 // [3, F, S, S] in [0, 1]
	CX, CY    []float64 // [F] object centre per frame (pixels, y down)
	ObjSize   float64   // object width in pixels
}

// Caption is the sentence of a video: "a red disk moving up-left".
func Caption(colour, shape, direction string) string {
	return "a " + colour + " " + shape + " moving " + direction
}

// ParseCaption inverts Caption.
func ParseCaption(c string) (colour, shape, direction string, err error) {
	w := strings.Fields(strings.ToLower(c))
	if len(w) != 5 || w[0] != "a" || w[3] != "moving" {
		return "", "", "", fmt.Errorf("data: caption %q is not \"a <colour> <shape> moving <direction>\"", c)
	}
	if !hasColour(w[1]) {
		return "", "", "", fmt.Errorf("data: caption %q: unknown colour %q", c, w[1])
	}
	if !has(Shapes, w[2]) {
		return "", "", "", fmt.Errorf("data: caption %q: unknown shape %q", c, w[2])
	}
	if _, ok := DirectionByName(w[4]); !ok {
		return "", "", "", fmt.Errorf("data: caption %q: unknown direction %q", c, w[4])
	}
	return w[1], w[2], w[4], nil
}

// ColourByName returns a palette colour.
func ColourByName(name string) (Colour, bool) {
	for _, c := range Colours {
		if c.Name == name {
			return c, true
		}
	}
	return Colour{}, false
}

// DirectionByName returns one of the 8 directions.
func DirectionByName(name string) (Direction, bool) {
	for _, d := range Directions {
		if d.Name == name {
			return d, true
		}
	}
	return Direction{}, false
}

func hasColour(n string) bool { _, ok := ColourByName(n); return ok }

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// splitSalt separates the random streams of the splits.
func splitSalt(split string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(split))
	return h.Sum64()
}

// SynthVideo renders video `index` of `split` ("train" or "heldout") for a dataset seed. It is a pure
// function of its arguments. The object starts where it can move for the first half of the video
// without touching a border, so the caption's direction is the dominant motion; afterwards it
// bounces (reflects) off the borders.
func SynthVideo(seed int64, split string, index, frames, size int) Video {
	rng := rand.New(rand.NewPCG(uint64(seed)^splitSalt(split), uint64(index)*0x9E3779B97F4A7C15+1))
	col := Colours[rng.IntN(len(Colours))]
	shape := Shapes[rng.IntN(len(Shapes))]
	dir := Directions[rng.IntN(len(Directions))]
	S := float64(size)
	obj := S * (objMinFrac + (objMaxFrac-objMinFrac)*rng.Float64())
	speed := S * speedFrac
	half := obj / 2
	lo, hi := half, S-half // range of the centre
	// first half of the video free of bounces: start at least `run` away from the border ahead
	run := speed * float64(frames/2)
	pick := func(d float64) float64 {
		a, b := lo, hi
		if d > 0 {
			b = hi - run*d
		} else if d < 0 {
			a = lo - run*d
		}
		if b < a { // tiny videos: no room, start centred
			return (lo + hi) / 2
		}
		return a + (b-a)*rng.Float64()
	}
	x, y := pick(dir.DX), pick(dir.DY)
	vx, vy := speed*dir.DX, speed*dir.DY

	v := Video{
		ID:      fmt.Sprintf("%s-%06d", split, index),
		Caption: Caption(col.Name, shape, dir.Name),
		Colour:  col.Name, Shape: shape, Direction: dir.Name,
		Frames: frames, Size: size, ObjSize: obj,
		Pixels: make([]float32, 3*frames*size*size),
		CX:     make([]float64, frames), CY: make([]float64, frames),
	}
	plane := size * size
	for f := 0; f < frames; f++ {
		v.CX[f], v.CY[f] = x, y
		renderFrame(v.Pixels, f, frames, size, plane, shape, col, x, y, obj)
		// advance and reflect off the borders
		x, vx = bounce(x+vx, vx, lo, hi)
		y, vy = bounce(y+vy, vy, lo, hi)
	}
	return v
}

func bounce(p, v, lo, hi float64) (float64, float64) {
	for p < lo || p > hi {
		if p < lo {
			p, v = 2*lo-p, -v
		}
		if p > hi {
			p, v = 2*hi-p, -v
		}
	}
	return p, v
}

// renderFrame draws one frame with 4×4 supersampled coverage (anti-aliased edges).
func renderFrame(px []float32, f, F, S, plane int, shape string, col Colour, cx, cy, obj float64) {
	const ss = 4
	half := obj / 2
	arm := obj / 6 // the cross's arms are obj/3 thick
	inside := func(x, y float64) bool {
		dx, dy := x-cx, y-cy
		switch shape {
		case "square":
			return math.Abs(dx) <= half && math.Abs(dy) <= half
		case "disk":
			return dx*dx+dy*dy <= half*half
		default: // cross
			return (math.Abs(dx) <= half && math.Abs(dy) <= arm) || (math.Abs(dy) <= half && math.Abs(dx) <= arm)
		}
	}
	rgb := [3]float32{col.R, col.G, col.B}
	bg := [3]float32{Background.R, Background.G, Background.B}
	x0, x1 := max(0, int(cx-half)-1), min(S-1, int(cx+half)+1)
	y0, y1 := max(0, int(cy-half)-1), min(S-1, int(cy+half)+1)
	for c := 0; c < 3; c++ {
		base := (c*F + f) * plane
		for i := 0; i < plane; i++ {
			px[base+i] = bg[c]
		}
	}
	for y := y0; y <= y1; y++ {
		for x := x0; x <= x1; x++ {
			n := 0
			for sy := 0; sy < ss; sy++ {
				for sx := 0; sx < ss; sx++ {
					if inside(float64(x)+(float64(sx)+0.5)/ss, float64(y)+(float64(sy)+0.5)/ss) {
						n++
					}
				}
			}
			if n == 0 {
				continue
			}
			a := float32(n) / (ss * ss)
			for c := 0; c < 3; c++ {
				px[(c*F+f)*plane+y*S+x] = bg[c]*(1-a) + rgb[c]*a
			}
		}
	}
}

// EncodeLatent is the fixed invertible map of docs/data.md: pixels p [3, F, 4h, 4w] in [0, 1] →
// latent [48, F, h, w], latent[c·16 + dy·4 + dx, f, y', x'] = 2·p[c, f, 4y'+dy, 4x'+dx] − 1.
func EncodeLatent(p []float32, F, h, w int) []float32 {
	lat := make([]float32, LatentChannels*F*h*w)
	H, W := 4*h, 4*w
	for c := 0; c < 3; c++ {
		for dy := 0; dy < 4; dy++ {
			for dx := 0; dx < 4; dx++ {
				ch := c*16 + dy*4 + dx
				for f := 0; f < F; f++ {
					for y := 0; y < h; y++ {
						for x := 0; x < w; x++ {
							lat[((ch*F+f)*h+y)*w+x] = 2*p[((c*F+f)*H+4*y+dy)*W+4*x+dx] - 1
						}
					}
				}
			}
		}
	}
	return lat
}

// DecodeLatent inverts EncodeLatent: latent [48, F, h, w] → pixels [3, F, 4h, 4w], clamped to
// [0, 1] (generated latents may leave [−1, 1]).
func DecodeLatent(lat []float32, F, h, w int) []float32 {
	H, W := 4*h, 4*w
	p := make([]float32, 3*F*H*W)
	for c := 0; c < 3; c++ {
		for dy := 0; dy < 4; dy++ {
			for dx := 0; dx < 4; dx++ {
				ch := c*16 + dy*4 + dx
				for f := 0; f < F; f++ {
					for y := 0; y < h; y++ {
						for x := 0; x < w; x++ {
							v := (lat[((ch*F+f)*h+y)*w+x] + 1) / 2
							p[((c*F+f)*H+4*y+dy)*W+4*x+dx] = min(max(v, 0), 1)
						}
					}
				}
			}
		}
	}
	return p
}

// TextSeed seeds the toy text encoder; it is fixed, so every dataset and model shares one encoder.
const TextSeed = 0x7e57_e4c0_de70_0001

// WordVector is the toy encoder's vector of a word: text_dim values drawn N(0, 1) from a PCG
// stream seeded by (TextSeed, FNV-64a of the lowercased word). A word's first k values do not
// depend on text_dim.
func WordVector(word string, textDim int) []float32 {
	h := fnv.New64a()
	h.Write([]byte(strings.ToLower(word)))
	rng := rand.New(rand.NewPCG(TextSeed, h.Sum64()))
	v := make([]float32, textDim)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// EncodeText is the toy text encoder: the caption's words (lowercased, split on white space), one
// token each, as a [textLen, textDim] matrix, zero-padded (words beyond textLen are dropped).
// The empty prompt "" (the null/unconditional branch of CFG) is the all-zero matrix, which is
// also what the loader puts in place of a CFG-dropped caption.
func EncodeText(caption string, textDim, textLen int) []float32 {
	out := make([]float32, textLen*textDim)
	for i, w := range strings.Fields(caption) {
		if i >= textLen {
			break
		}
		copy(out[i*textDim:(i+1)*textDim], WordVector(w, textDim))
	}
	return out
}

// EncodeTextTokens is EncodeText without padding: [n_words, textDim] (what the dataset stores).
func EncodeTextTokens(caption string, textDim int) (emb []float32, n int) {
	words := strings.Fields(caption)
	emb = make([]float32, 0, len(words)*textDim)
	for _, w := range words {
		emb = append(emb, WordVector(w, textDim)...)
	}
	return emb, len(words)
}
