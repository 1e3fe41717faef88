package eval

import (
	"math"
	"slices"
	"testing"

	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/sampler"
)

// oracle is the exact conditional velocity of the flow whose data are the training videos of the
// prompt's caption (the empirical distribution): E[x0|x_σ] = Σ_i w_i·x0_i with
// w ∝ exp(−‖x − (1−σ)·x0_i‖² / 2σ²), v = (x − E[x0|x_σ]) / σ. A perfect "teacher" that needs no
// training, so the sampler and the metrics can be checked end to end on real data.
type oracle struct {
	dev     kernels.Device
	byCap   map[string][][]float32 // caption → training latents [48·F·h·w]
	caps    []string
	embs    [][]float32 // the captions' padded embeddings
	out     *kernels.Tensor
	textDim int
}

func newOracle(n, frames, size, textDim, textLen int) *oracle {
	o := &oracle{dev: kernels.CPU(), byCap: map[string][][]float32{}, textDim: textDim}
	for i := 0; i < n; i++ {
		v := data.SynthVideo(1, "train", i, frames, size)
		if _, ok := o.byCap[v.Caption]; !ok {
			o.caps = append(o.caps, v.Caption)
			o.embs = append(o.embs, data.EncodeText(v.Caption, textDim, textLen))
		}
		o.byCap[v.Caption] = append(o.byCap[v.Caption], data.EncodeLatent(v.Pixels, frames, size/4, size/4))
	}
	return o
}

func (o *oracle) Device() kernels.Device { return o.dev }

func (o *oracle) Velocity(x, t, ctx *kernels.Tensor) *kernels.Tensor {
	B := x.Shape[0]
	per, lt, F := x.Numel()/B, ctx.Numel()/B, t.Numel()/B
	v := make([]float32, x.Numel())
	for b := 0; b < B; b++ {
		sigma := float64(t.F32[b*F]) / 1000
		var set [][]float32
		for k, e := range o.embs {
			if slices.Equal(e, ctx.F32[b*lt:(b+1)*lt]) {
				set = o.byCap[o.caps[k]]
			}
		}
		if set == nil {
			panic("oracle: a prompt with no training video")
		}
		xb := x.F32[b*per : (b+1)*per]
		logw := make([]float64, len(set))
		mx := math.Inf(-1)
		for i, x0 := range set {
			d := 0.0
			for j, xv := range xb {
				e := float64(xv) - (1-sigma)*float64(x0[j])
				d += e * e
			}
			logw[i] = -d / (2 * sigma * sigma)
			mx = math.Max(mx, logw[i])
		}
		z := 0.0
		for i := range logw {
			logw[i] = math.Exp(logw[i] - mx)
			z += logw[i]
		}
		for j, xv := range xb {
			m := 0.0
			for i, x0 := range set {
				m += logw[i] * float64(x0[j])
			}
			v[b*per+j] = float32((float64(xv) - m/z) / sigma)
		}
	}
	if o.out == nil || o.out.Numel() != len(v) {
		o.out = o.dev.Alloc(kernels.F32, x.Shape...)
	}
	o.out = o.out.Reshape(x.Shape...)
	o.dev.FromHost(o.out, v)
	return o.out
}

// End to end on real data with an exact teacher: Euler over the oracle's flow at 50 steps lands on
// sharp training videos of the right caption (CondAcc ≈ 1, FD near the data floor); at 1 step it
// returns the posterior mean at σ = 1 — the blurred average of the caption's videos — which the
// metrics must rank clearly worse. (4 steps already reach the 50-step quality here: the posterior of
// an empirical distribution collapses onto one of them early; ~10 per caption here.)
func TestOracleTeacherTable(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const frames, size, textDim, textLen, count = 8, 32, 16, 8, 32
	o := newOracle(1500, frames, size, textDim, textLen)
	// held-out prompts whose captions the oracle has training videos for
	held := &Set{C: 48, F: frames, H: size / 4, W: size / 4, L: textLen, TextDim: textDim}
	var refPix [][]float32
	for i := 0; held.N < count || len(refPix) < 128; i++ {
		v := data.SynthVideo(1, "heldout", i, frames, size)
		if _, ok := o.byCap[v.Caption]; !ok {
			continue
		}
		if held.N < count {
			held.N++
			held.Latents = append(held.Latents, data.EncodeLatent(v.Pixels, frames, size/4, size/4)...)
			held.Text = append(held.Text, data.EncodeText(v.Caption, textDim, textLen)...)
			held.Captions = append(held.Captions, v.Caption)
		} else {
			refPix = append(refPix, v.Pixels)
		}
	}
	ref := RealFeatures(Videos{F: frames, H: size, W: size, Pix: refPix})
	realV, _ := held.Videos()
	floor, err := ScoreRef(realV, held.Captions, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("data (held-out videos):  CondAcc %.3f FD %6.3f stability %.4f", floor.CondAcc, floor.FD, floor.Stability)
	fd, acc := map[int]float64{}, map[int]float64{}
	for _, steps := range []int{1, 4, 50} {
		lat, nfe, _, err := Generate(o, held, count, 8, 100, sampler.Options{Method: sampler.Euler, Steps: steps, Shift: 3}, 0)
		if err != nil {
			t.Fatal(err)
		}
		gen, _ := DecodeLatents(lat, count, 48, frames, size/4, size/4)
		m, err := ScoreRef(gen, held.Captions, ref)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("oracle Euler %2d steps (NFE %2d): CondAcc %.3f FD %6.3f stability %.4f", steps, nfe, m.CondAcc, m.FD, m.Stability)
		fd[steps], acc[steps] = m.FD, m.CondAcc
		if steps == 50 && (m.CondAcc < 0.9 || m.FD > 3*floor.FD+1) {
			t.Fatalf("50-step oracle samples: CondAcc %g, FD %g (data floor %g)", m.CondAcc, m.FD, floor.FD)
		}
	}
	if fd[1] < 5*fd[50] || acc[1] > acc[50]-0.2 {
		t.Fatalf("1 step vs 50: FD %v, CondAcc %v: the blurred 1-step samples are not ranked clearly worse", fd, acc)
	}
}
