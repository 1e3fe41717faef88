package objectives_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// odePairs are teacher trajectories as `fewstep data ode-pairs` stores them: x at the levels of the
// denoising list and the final x0 of a 20-step Euler solve with CFG w, per item.
type odePairs struct {
	sig      []float32   // [S] levels (descending)
	traj, x0 [][]float32 // per item: [S·C·F·H·W], [C·F·H·W]
	ctx      [][]float32 // per item: [L·text_dim]
}

// makeODEPairs solves n teacher ODEs (bidirectional, mB at a time, 8 Euler steps) from seeded noise
// and keeps x at the grid points 0, 2, 4, 6 (σ = 1, .75, .5, .25) and the end.
func makeODEPairs(teacher *models.DiT, m *modes, n int, w float32, seed uint64) *odePairs {
	dev, C := teacher.Dev, m.cfg.InDim
	const N = 8
	keep := []int{0, 2, 4, 6}
	op := &odePairs{}
	for _, k := range keep {
		op.sig = append(op.sig, 1-float32(k)/N)
	}
	s := models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL}
	p := teacher.NewPass(s)
	size := C * mF * mH * mW
	r := rand.New(rand.NewPCG(seed, 1))
	xt, tt := dev.Alloc(kernels.F32, mB, C, mF, mH, mW), dev.Alloc(kernels.F32, mB, mF)
	ct, nt := dev.Alloc(kernels.F32, mB, mL, m.cfg.TextDim), dev.Alloc(kernels.F32, mB, mL, m.cfg.TextDim)
	for done := 0; done < n; done += mB {
		x := make([]float32, mB*size)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		var ctx []float32
		for b := 0; b < mB; b++ {
			ctx = append(ctx, m.E[r.IntN(kClasses)]...)
		}
		dev.FromHost(ct, ctx)
		traj := make([][]float32, mB)
		vc, vu := make([]float32, len(x)), make([]float32, len(x))
		ts := make([]float32, mB*mF)
		for i := 0; i < N; i++ {
			sg := 1 - float32(i)/N
			for ki, k := range keep {
				if k == i {
					for b := 0; b < mB; b++ {
						if ki == 0 {
							traj[b] = nil
						}
						traj[b] = append(traj[b], x[b*size:(b+1)*size]...)
					}
				}
			}
			for q := range ts {
				ts[q] = 1000 * sg
			}
			dev.FromHost(tt, ts)
			dev.FromHost(xt, x)
			dev.ToHost(vc, teacher.Forward(p, xt, tt, ct))
			dev.ToHost(vu, teacher.Forward(p, xt, tt, nt))
			for q := range x {
				x[q] += -(1.0 / N) * (vu[q] + w*(vc[q]-vu[q]))
			}
		}
		for b := 0; b < mB && done+b < n; b++ {
			op.traj = append(op.traj, traj[b])
			op.x0 = append(op.x0, append([]float32(nil), x[b*size:(b+1)*size]...))
			op.ctx = append(op.ctx, ctx[b*mL*m.cfg.TextDim:(b+1)*mL*m.cfg.TextDim])
		}
	}
	return op
}

// batch fills b with items idx (TrajX [B,S,C,F,H,W], X0, Ctx).
func (op *odePairs) batch(dev kernels.Device, b *objectives.Batch, idx []int) {
	var tx, x0, ctx []float32
	for _, i := range idx {
		tx = append(tx, op.traj[i]...)
		x0 = append(x0, op.x0[i]...)
		ctx = append(ctx, op.ctx[i]...)
	}
	dev.FromHost(b.TrajX, tx)
	dev.FromHost(b.X0, x0)
	dev.FromHost(b.Ctx, ctx)
	b.TrajSigma = op.sig
}

// heldOutError is the causal student's x0 regression error on held-out trajectories, every chunk at
// the same level, per level (relative to ‖x0‖²).
func heldOutError(net *models.DiT, op *odePairs, b *objectives.Batch, s models.Shape) []float64 {
	dev, C := net.Dev, net.Cfg.InDim
	p := net.NewPass(s)
	tt := dev.Alloc(kernels.F32, s.B, s.F)
	x := dev.Alloc(kernels.F32, s.B, C, s.F, s.H, s.W)
	size := C * s.F * s.H * s.W
	e := make([]float64, len(op.sig))
	n := 0
	for start := 0; start+s.B <= len(op.x0); start += s.B {
		var idx []int
		for i := 0; i < s.B; i++ {
			idx = append(idx, start+i)
		}
		op.batch(dev, b, idx)
		for li, sg := range op.sig {
			var xin []float32
			for _, i := range idx {
				xin = append(xin, op.traj[i][li*size:(li+1)*size]...)
			}
			dev.FromHost(x, xin)
			ts := make([]float32, s.B*s.F)
			for q := range ts {
				ts[q] = 1000 * sg
			}
			dev.FromHost(tt, ts)
			v := make([]float32, len(xin))
			dev.ToHost(v, net.Forward(p, x, tt, b.Ctx))
			for bi, i := range idx {
				var num, den float64
				for q := 0; q < size; q++ {
					pred := xin[bi*size+q] - sg*v[bi*size+q]
					d := float64(pred - op.x0[i][q])
					num += d * d
					den += float64(op.x0[i][q]) * float64(op.x0[i][q])
				}
				e[li] += num / den
			}
		}
		n += s.B
	}
	for i := range e {
		e[i] /= float64(n)
	}
	return e
}

// odeinit regresses the teacher's ODE endpoints from its trajectories with the block-causal
// student: the held-out x0 error (trajectories never trained on) falls well below the teacher
// weights' own error in the causal mask. Trained through the objective's API with AdamW.
func TestODEInitTrains(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for real (-short)")
	}
	_, teacher, m := trainTeacher(t)
	dev := kernels.CPU()
	train := makeODEPairs(teacher, m, 256, 1.5, 7)
	held := makeODEPairs(teacher, m, 16, 1.5, 8)

	s := models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL, ChunkFrames: 1}
	o, err := objectives.New("odeinit", nil)
	if err != nil {
		t.Fatal(err)
	}
	student := models.New(dev, m.cfg, true)
	dev.Copy(student.W, teacher.W)
	env := &objectives.Env{Dev: dev, Cfg: m.cfg, Shape: s, Roles: map[string]*objectives.Role{
		objectives.Student: {Net: student, W: student.W, G: student.G, Table: student.Table}}}
	if err := o.Setup(env); err != nil {
		t.Fatal(err)
	}
	C := m.cfg.InDim
	b := &objectives.Batch{
		X0:    dev.Alloc(kernels.F32, mB, C, mF, mH, mW),
		Ctx:   dev.Alloc(kernels.F32, mB, mL, m.cfg.TextDim),
		Null:  dev.Alloc(kernels.F32, mB, mL, m.cfg.TextDim),
		TrajX: dev.Alloc(kernels.F32, mB, len(train.sig), C, mF, mH, mW),
	}
	e0 := heldOutError(student, held, b, s)
	mom, vel := dev.Alloc(kernels.F32, student.W.Numel()), dev.Alloc(kernels.F32, student.W.Numel())
	r := rand.New(rand.NewPCG(3, 3))
	var first, last float64
	const steps = 200
	for n := 1; n <= steps; n++ {
		train.batch(dev, b, r.Perm(len(train.x0))[:mB])
		dev.Zero(student.G)
		up, err := o.Step(&objectives.Step{Step: n, Accum: 1, RNG: objectives.StepRNG(1, n, 0)}, b)
		if err != nil {
			t.Fatal(err)
		}
		dev.AdamW(student.W, student.G, mom, vel, 1e-3, 0.9, 0.999, 1e-8, 0, n)
		if n <= 10 {
			first += up.Metrics["loss"] / 10
		}
		if n > steps-10 {
			last += up.Metrics["loss"] / 10
		}
	}
	e1 := heldOutError(student, held, b, s)
	var m0, m1 float64
	for i := range e0 {
		m0 += e0[i] / float64(len(e0))
		m1 += e1[i] / float64(len(e1))
	}
	t.Logf("held-out relative x0 error at σ %v: %.4f → %.4f (mean %.4f → %.4f); training loss %.4f → %.4f", held.sig, e0, e1, m0, m1, first, last)
	if !(m1 < 0.75*m0 && e1[0] < 0.75*e0[0]) || math.IsNaN(m1) {
		t.Fatalf("odeinit: held-out error %.4f (one step from noise %.4f), before %.4f (%.4f)", m1, e1[0], m0, e0[0])
	}
}
