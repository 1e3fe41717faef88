package eval

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"

	"github.com/fewstep/fewstep/data"
)

// Videos is a set of decoded videos: Pix[i] = pixels [3, F, H, W] in [0, 1].
type Videos struct {
	F, H, W int
	Pix     [][]float32
	// DirFrames > 0 measures the motion direction over frames 0..DirFrames (default ⌊F/2⌋); set it
	// to half the training length for longer (streamed) videos.
	DirFrames int
}

func (v Videos) analyze(i int) Analysis {
	last := v.DirFrames
	if last <= 0 {
		last = v.F / 2
	}
	return AnalyzeDir(v.Pix[i], v.F, v.H, v.W, last)
}

// DecodeLatents decodes N synthetic latents [N, 48, F, h, w] to pixels (data.DecodeLatent).
func DecodeLatents(lat []float32, N, C, F, h, w int) (Videos, error) {
	if C != data.LatentChannels {
		return Videos{}, fmt.Errorf("eval: latents have %d channels; the pixel metrics need the synthetic latent space (%d channels)", C, data.LatentChannels)
	}
	per := C * F * h * w
	if N < 1 || len(lat) != N*per {
		return Videos{}, fmt.Errorf("eval: %d latent values for [N=%d, C=%d, F=%d, H=%d, W=%d]", len(lat), N, C, F, h, w)
	}
	v := Videos{F: F, H: 4 * h, W: 4 * w, Pix: make([][]float32, N)}
	for i := range v.Pix {
		v.Pix[i] = data.DecodeLatent(lat[i*per:(i+1)*per], F, h, w)
	}
	return v, nil
}

// FeatureDim is the length of Features' vectors for F frames.
func FeatureDim(F int) int { return 6 + 3 + 3*F + (F - 1) + ProjDim }

// ProjDim is the size of the fixed random projection in Features.
const ProjDim = 16

// ProjSeed seeds the random projection; fixed so FDs are comparable across runs and commits.
const ProjSeed = 0x5eed_fd

// Features is the fixed feature vector of one video [3, F, H, W] for the Fréchet distance
// (FeatureDim(F) values; every block scaled to be O(1)):
//
//	[0:6]      per-channel mean and standard deviation of all pixels (R, G, B)
//	[6:9]      the object colour c (Analyze; the background colour when no object is found)
//	F values   centre-of-mass x per frame / W      (0.5 where a frame has no object)
//	F values   centre-of-mass y per frame / H
//	F values   object area per frame / (H·W) × 10
//	F−1 values mean |p_{f+1} − p_f| over pixels and channels × 10 (frame differences)
//	16 values  R·(p − bg) with R [16, 3·F·H·W] drawn N(0, 1/(3·H·W)) from PCG(ProjSeed, 3·F·H·W)
func Features(pix []float32, F, H, W int, an Analysis) []float64 {
	plane := H * W
	out := make([]float64, 0, FeatureDim(F))
	bg := [3]float64{float64(data.Background.R), float64(data.Background.G), float64(data.Background.B)}
	for c := 0; c < 3; c++ {
		var s, s2 float64
		for _, v := range pix[c*F*plane : (c+1)*F*plane] {
			s += float64(v)
			s2 += float64(v) * float64(v)
		}
		n := float64(F * plane)
		m := s / n
		out = append(out, m, math.Sqrt(math.Max(s2/n-m*m, 0)))
	}
	col := an.Colour
	if an.Nearest == "" {
		col = bg
	}
	out = append(out, col[:]...)
	nan05 := func(v float64) float64 {
		if math.IsNaN(v) {
			return 0.5
		}
		return v
	}
	for f := 0; f < F; f++ {
		out = append(out, nan05(an.CX[f]/float64(W)))
	}
	for f := 0; f < F; f++ {
		out = append(out, nan05(an.CY[f]/float64(H)))
	}
	for f := 0; f < F; f++ {
		out = append(out, 10*an.Area[f]/float64(plane))
	}
	for f := 0; f+1 < F; f++ {
		s := 0.0
		for c := 0; c < 3; c++ {
			a, b := pix[(c*F+f)*plane:(c*F+f+1)*plane], pix[(c*F+f+1)*plane:(c*F+f+2)*plane]
			for i := range a {
				s += math.Abs(float64(b[i] - a[i]))
			}
		}
		out = append(out, 10*s/float64(3*plane))
	}
	R := projection(3*F*plane, plane)
	for k := 0; k < ProjDim; k++ {
		row := R[k*len(pix) : (k+1)*len(pix)]
		s := 0.0
		for i, v := range pix {
			s += float64(row[i]) * (float64(v) - bg[i/(F*plane)])
		}
		out = append(out, s)
	}
	return out
}

var (
	projMu    sync.Mutex
	projCache = map[int][]float32{}
)

// projection is the fixed [ProjDim, D] matrix of Features.
func projection(D, plane int) []float32 {
	projMu.Lock()
	defer projMu.Unlock()
	if R, ok := projCache[D]; ok {
		return R
	}
	r := rand.New(rand.NewPCG(ProjSeed, uint64(D)))
	R := make([]float32, ProjDim*D)
	s := 1 / math.Sqrt(float64(3*plane))
	for i := range R {
		R[i] = float32(r.NormFloat64() * s)
	}
	projCache[D] = R
	return R
}

// Metrics are docs/data.md's quality numbers for a set of generated videos.
type Metrics struct {
	N           int     `json:"n"`
	CondAcc     float64 `json:"cond_acc"`     // fraction with colour AND direction matching the caption
	ColourAcc   float64 `json:"colour_acc"`   // fraction with the caption's colour
	DirAcc      float64 `json:"dir_acc"`      // fraction with the caption's direction
	FD          float64 `json:"fd"`           // Fréchet distance to the real videos (Features); NaN if no reference
	SizeDrift   float64 `json:"size_drift"`   // mean over videos of std/mean of the per-frame object area
	ColourDrift float64 `json:"colour_drift"` // mean over videos of mean_f ‖colour_f − mean colour‖ (RGB in [0,1])
	Stability   float64 `json:"stability"`    // SizeDrift + ColourDrift (0 = perfectly stable; lower is better)
	// FDBlocks is the FD of each block of FeatureBlocks(F) apart (ScoreBlocks; nil otherwise).
	FDBlocks []float64 `json:"fd_blocks,omitempty"`
}

// Score measures generated videos against their captions and (when real is non-empty) against real
// videos of the same shape. A video with no object found counts as wrong for CondAcc and as drift 1
// in both drift terms.
func Score(gen Videos, captions []string, real Videos) (Metrics, error) {
	var ref [][]float64
	if len(real.Pix) > 0 {
		if real.F != gen.F || real.H != gen.H || real.W != gen.W {
			return Metrics{}, fmt.Errorf("eval: FD between videos of [F=%d, %d×%d] and real videos of [F=%d, %d×%d]", gen.F, gen.H, gen.W, real.F, real.H, real.W)
		}
		ref = RealFeatures(real)
	}
	return ScoreRef(gen, captions, ref)
}

// ScoreRef is Score against precomputed features of the real videos (RealFeatures; nil = no FD).
func ScoreRef(gen Videos, captions []string, ref [][]float64) (Metrics, error) {
	return ScoreBlocks(gen, captions, ref, false)
}

// ScoreBlocks is ScoreRef that, with blocks (and a reference), also fills FDBlocks.
func ScoreBlocks(gen Videos, captions []string, ref [][]float64, blocks bool) (Metrics, error) {
	N := len(gen.Pix)
	if N == 0 {
		return Metrics{}, fmt.Errorf("eval: no videos to score")
	}
	if len(captions) != N {
		return Metrics{}, fmt.Errorf("eval: %d videos but %d captions", N, len(captions))
	}
	m := Metrics{N: N, FD: math.NaN()}
	feats := make([][]float64, N)
	for i, pix := range gen.Pix {
		if len(pix) != 3*gen.F*gen.H*gen.W {
			return Metrics{}, fmt.Errorf("eval: video %d has %d pixels, want 3·%d·%d·%d", i, len(pix), gen.F, gen.H, gen.W)
		}
		colour, _, dir, err := data.ParseCaption(captions[i])
		if err != nil {
			return Metrics{}, fmt.Errorf("eval: video %d: %w", i, err)
		}
		an := gen.analyze(i)
		okC, okD := an.Found && an.Nearest == colour, an.Found && an.Direction == dir
		if okC {
			m.ColourAcc++
		}
		if okD {
			m.DirAcc++
		}
		if okC && okD {
			m.CondAcc++
		}
		sd, cd := drift(an)
		m.SizeDrift += sd
		m.ColourDrift += cd
		feats[i] = Features(pix, gen.F, gen.H, gen.W, an)
	}
	n := float64(N)
	m.CondAcc /= n
	m.ColourAcc /= n
	m.DirAcc /= n
	m.SizeDrift /= n
	m.ColourDrift /= n
	m.Stability = m.SizeDrift + m.ColourDrift
	if ref != nil {
		fd, err := Frechet(feats, ref)
		if err != nil {
			return m, err
		}
		m.FD = fd
		if blocks {
			if m.FDBlocks, err = FrechetBlocks(feats, ref, FeatureBlocks(gen.F)); err != nil {
				return m, err
			}
		}
	}
	return m, nil
}

// RealFeatures is Features of every video of a set.
func RealFeatures(v Videos) [][]float64 {
	out := make([][]float64, len(v.Pix))
	for i, pix := range v.Pix {
		out[i] = Features(pix, v.F, v.H, v.W, v.analyze(i))
	}
	return out
}

// drift is (std/mean of the per-frame area, mean distance of the per-frame colours to their mean).
func drift(an Analysis) (float64, float64) {
	if !an.Found {
		return 1, 1
	}
	F := float64(len(an.Area))
	var s, s2, cd float64
	var mc [3]float64
	for f, a := range an.Area {
		s += a
		s2 += a * a
		for c := range mc {
			mc[c] += an.FrameRGB[f][c] / F
		}
	}
	for _, c := range an.FrameRGB {
		cd += math.Sqrt(math.Pow(c[0]-mc[0], 2) + math.Pow(c[1]-mc[1], 2) + math.Pow(c[2]-mc[2], 2))
	}
	mean := s / F
	if mean <= 0 {
		return 1, 1
	}
	return math.Sqrt(math.Max(s2/F-mean*mean, 0)) / mean, cd / F
}
