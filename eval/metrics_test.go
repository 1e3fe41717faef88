package eval

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/data"
)

const tF, tS = 8, 32

// realSet renders n synthetic videos of a split through the latent map and back (as eval sees them).
func realSet(t *testing.T, seed int64, split string, from, n int) (Videos, []string, []data.Video) {
	t.Helper()
	var lat []float32
	var caps []string
	var raw []data.Video
	for i := from; i < from+n; i++ {
		v := data.SynthVideo(seed, split, i, tF, tS)
		lat = append(lat, data.EncodeLatent(v.Pixels, tF, tS/4, tS/4)...)
		caps = append(caps, v.Caption)
		raw = append(raw, v)
	}
	vids, err := DecodeLatents(lat, n, 48, tF, tS/4, tS/4)
	if err != nil {
		t.Fatal(err)
	}
	return vids, caps, raw
}

// Analyze recovers what the renderer drew: colour, direction, centre (vs the renderer's own track)
// and a constant area. Centres agree to the renderer's 4×4 supersampling (¼ px).
func TestAnalyzeRecoversGroundTruth(t *testing.T) {
	vids, _, raw := realSet(t, 11, "heldout", 0, 60)
	for i, pix := range vids.Pix {
		an := Analyze(pix, tF, tS, tS)
		v := raw[i]
		if !an.Found || an.Nearest != v.Colour || an.Direction != v.Direction {
			t.Fatalf("video %d (%s): found %v colour %q direction %q (v = %.2f, %.2f)", i, v.Caption, an.Found, an.Nearest, an.Direction, an.VX, an.VY)
		}
		for f := 0; f < tF; f++ {
			if math.Abs(an.CX[f]-v.CX[f]) > 0.2 || math.Abs(an.CY[f]-v.CY[f]) > 0.2 {
				t.Fatalf("video %d frame %d: centre (%.3f, %.3f), renderer (%.3f, %.3f)", i, f, an.CX[f], an.CY[f], v.CX[f], v.CY[f])
			}
		}
		if sd, cd := drift(an); sd > 0.05 || cd > 0.01 { // area quantized by the 4×4 supersampling
			t.Fatalf("video %d (%s): size drift %g colour drift %g on a rigid object", i, v.Caption, sd, cd)
		}
	}
}

// The metrics on real data: the held-out videos score CondAcc 1 against their own captions and a
// small FD against another real split; noise, blank videos and shuffled captions score badly.
func TestMetricsOnRealData(t *testing.T) {
	const n = 128
	held, caps, _ := realSet(t, 11, "heldout", 0, n)
	other, _, _ := realSet(t, 11, "train", 0, n)
	ref := RealFeatures(other)
	m, err := ScoreRef(held, caps, ref)
	if err != nil {
		t.Fatal(err)
	}
	if m.CondAcc != 1 || m.Stability > 0.03 {
		t.Fatalf("real held-out videos: %+v, want CondAcc 1 and stability ≈ 0", m)
	}
	// Shuffled captions: chance is about 1/6 · 1/8.
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 5))
	shuf := append([]string(nil), caps...)
	r.Shuffle(len(shuf), func(i, j int) { shuf[i], shuf[j] = shuf[j], shuf[i] })
	ms, _ := ScoreRef(held, shuf, ref)
	if ms.CondAcc > 0.15 {
		t.Fatalf("shuffled captions: CondAcc %g", ms.CondAcc)
	}
	// Noise: the flow's starting point, decoded.
	noise := Videos{F: tF, H: tS, W: tS}
	blurred := Videos{F: tF, H: tS, W: tS} // real videos with every frame replaced by the mean frame
	for i := 0; i < n; i++ {
		lat := make([]float32, 48*tF*8*8)
		for j := range lat {
			lat[j] = float32(r.NormFloat64())
		}
		noise.Pix = append(noise.Pix, data.DecodeLatent(lat, tF, 8, 8))
		b := append([]float32(nil), held.Pix[i]...)
		plane := tS * tS
		for c := 0; c < 3; c++ {
			for p := 0; p < plane; p++ {
				s := float32(0)
				for f := 0; f < tF; f++ {
					s += b[(c*tF+f)*plane+p]
				}
				for f := 0; f < tF; f++ {
					b[(c*tF+f)*plane+p] = s / tF
				}
			}
		}
		blurred.Pix = append(blurred.Pix, b)
	}
	mn, _ := ScoreRef(noise, caps, ref)
	mb, _ := ScoreRef(blurred, caps, ref)
	t.Logf("real vs real: %+v", m)
	t.Logf("noise:        %+v", mn)
	t.Logf("frozen blur:  %+v", mb)
	t.Logf("shuffled:     CondAcc %g", ms.CondAcc)
	if mn.CondAcc > 0.1 || mn.FD < 20*m.FD {
		t.Fatalf("noise: CondAcc %g, FD %g (real–real FD %g)", mn.CondAcc, mn.FD, m.FD)
	}
	if mb.DirAcc > 0.1 || mb.FD < 3*m.FD {
		t.Fatalf("motionless blur: DirAcc %g, FD %g (real–real FD %g)", mb.DirAcc, mb.FD, m.FD)
	}
}

func TestScoreBadInputs(t *testing.T) {
	held, caps, _ := realSet(t, 3, "heldout", 0, 4)
	if _, err := Score(held, caps[:3], Videos{}); err == nil {
		t.Fatal("caption count mismatch: no error")
	}
	bad := append([]string(nil), caps...)
	bad[2] = "a purple blob"
	if _, err := Score(held, bad, Videos{}); err == nil {
		t.Fatal("bad caption: no error")
	}
	if _, err := Score(held, caps, Videos{F: 4, H: 32, W: 32, Pix: held.Pix}); err == nil {
		t.Fatal("real videos of another length: no error")
	}
	if _, err := DecodeLatents(make([]float32, 16*8*8*8), 1, 16, 8, 8, 8); err == nil {
		t.Fatal("16-channel latents decoded as synthetic: no error")
	}
}

// The metrics respond to corruption the way a quality measure must: FD grows with the strength of
// pixel noise while CondAcc survives mild noise; time reversal breaks the direction only; a colour
// permutation breaks the colour only (FD, which is unconditional, rightly barely moves for these
// two: reversed and recoloured videos are still videos of the data distribution).
func TestMetricsTrackCorruption(t *testing.T) {
	const n = 64
	held, caps, _ := realSet(t, 21, "heldout", 0, n)
	refV, _, _ := realSet(t, 21, "train", 0, 2*n)
	ref := RealFeatures(refV)
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 9))
	corrupt := func(f func(pix []float32) []float32) Videos {
		v := Videos{F: tF, H: tS, W: tS}
		for _, p := range held.Pix {
			v.Pix = append(v.Pix, f(append([]float32(nil), p...)))
		}
		return v
	}
	prev := -1.0
	for _, s := range []float64{0, 0.05, 0.1, 0.2, 0.4} {
		v := corrupt(func(p []float32) []float32 {
			for i := range p {
				p[i] = float32(math.Min(math.Max(float64(p[i])+s*r.NormFloat64(), 0), 1))
			}
			return p
		})
		m, err := ScoreRef(v, caps, ref)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pixel noise %.2f: CondAcc %.3f FD %.3f stability %.4f", s, m.CondAcc, m.FD, m.Stability)
		if m.FD <= prev {
			t.Fatalf("pixel noise %g: FD %g not above the previous level's %g", s, m.FD, prev)
		}
		prev = m.FD
		if s <= 0.1 && m.CondAcc < 0.95 {
			t.Fatalf("pixel noise %g: CondAcc %g", s, m.CondAcc)
		}
	}
	plane := tS * tS
	rev := corrupt(func(p []float32) []float32 { // frames in reverse order
		q := make([]float32, len(p))
		for c := 0; c < 3; c++ {
			for f := 0; f < tF; f++ {
				copy(q[(c*tF+f)*plane:(c*tF+f+1)*plane], p[(c*tF+tF-1-f)*plane:(c*tF+tF-f)*plane])
			}
		}
		return q
	})
	perm := corrupt(func(p []float32) []float32 { // RGB → GBR
		q := make([]float32, len(p))
		n := tF * plane
		copy(q[0:n], p[n:2*n])
		copy(q[n:2*n], p[2*n:])
		copy(q[2*n:], p[:n])
		return q
	})
	mr, _ := ScoreRef(rev, caps, ref)
	mp, _ := ScoreRef(perm, caps, ref)
	t.Logf("time-reversed: %+v", mr)
	t.Logf("colour-permuted: %+v", mp)
	if mr.ColourAcc != 1 || mr.DirAcc > 0.25 {
		t.Fatalf("time reversal: colour %g (want 1), direction %g (want ≈ 0: only bounced tracks can agree)", mr.ColourAcc, mr.DirAcc)
	}
	if mp.DirAcc != 1 || mp.ColourAcc > 0.2 {
		t.Fatalf("colour permutation: direction %g (want 1), colour %g (want ≈ 0)", mp.DirAcc, mp.ColourAcc)
	}
}
