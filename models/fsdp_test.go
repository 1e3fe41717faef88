package models

import (
	"fmt"
	"math"
	"math/rand"
	"sync"
	"testing"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
)

// event is one entry of a rank's record: a gather or reduce-scatter issued (with the ticket that
// covers it), a wait (for a ticket), or compute (a GEMM or a zeroing on the device).
type event struct {
	kind string // "AG", "RS", "W", "C"
	t    dist.Ticket
}

type record struct {
	mu  sync.Mutex
	log []event
}

func (r *record) add(kind string, t dist.Ticket) {
	r.mu.Lock()
	r.log = append(r.log, event{kind, t})
	r.mu.Unlock()
}

// recordComm records a rank's collectives and waits.
type recordComm struct {
	dist.Comm
	r *record
}

func (c recordComm) AllGather(out, in *kernels.Tensor) error {
	err := c.Comm.AllGather(out, in)
	c.r.add("AG", c.Comm.Mark())
	return err
}

func (c recordComm) ReduceScatter(out, in *kernels.Tensor, op dist.Op) error {
	err := c.Comm.ReduceScatter(out, in, op)
	c.r.add("RS", c.Comm.Mark())
	return err
}

func (c recordComm) WaitFor(t dist.Ticket) error {
	c.r.add("W", t)
	return c.Comm.WaitFor(t)
}

// recordDev records the compute between the collectives.
type recordDev struct {
	kernels.Device
	r *record
}

func (d recordDev) Linear(out, x, w, b *kernels.Tensor) {
	d.r.add("C", 0)
	d.Device.Linear(out, x, w, b)
}

func (d recordDev) LinearBack(dx, dw, db, dy, x, w *kernels.Tensor) {
	d.r.add("C", 0)
	d.Device.LinearBack(dx, dw, db, dy, x, w)
}

// TestShardedDiTMatchesWhole: a DiT sharded over 1, 2 and 3 in-process ranks (the same inputs on
// every rank) gives the whole DiT's outputs and input gradients bit for bit and its parameter
// gradients (the mean over ranks of equal values) within fp32 rounding, over two forward/backward
// passes accumulating into G, plain and with recompute. And every block's gather but the first is
// prefetched: issued before the compute that precedes its wait (forward: during block l−1,
// backward: during block l+1).
func TestShardedDiTMatchesWhole(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.Layers = 4, 4, 5
	B, F, H, W, L := 2, 2, 4, 2, 3
	C := cfg.InDim
	dev := kernels.CPU()
	whole := New(dev, cfg, true)
	randomize(whole, 11)
	wHost := host(dev, whole.W)
	rng := rand.New(rand.NewSource(12))
	xs := randn(rng, B*C*F*H*W, 1)
	ts := randTimesteps(rng, B*F)
	cs := randn(rng, B*L*cfg.TextDim, 1)
	cots := [][]float32{randn(rng, B*C*F*H*W, 1), randn(rng, B*C*F*H*W, 1)}

	// run: two passes of forward and backward on m (dev its device), G accumulated; the outputs,
	// the input gradients, and G (whole, table layout; a collective for a sharded m).
	run := func(m *DiT, d kernels.Device, recompute bool) (outs, dxs [][]float32, g []float32, err error) {
		s := Shape{B: B, F: F, H: H, W: W, L: L, Recompute: recompute}
		p := m.NewPass(s)
		defer p.Free()
		x, tt := devT(d, xs, B, C, F, H, W), devT(d, ts, B, F)
		ctx := devT(d, cs, B, L, cfg.TextDim)
		m.ZeroGrad()
		for _, c := range cots {
			outs = append(outs, host(d, m.Forward(p, x, tt, ctx)))
			dxs = append(dxs, host(d, m.Backward(p, devT(d, c, B, C, F, H, W))))
		}
		if m.fs != nil {
			if rc, ok := m.fs.comm.(recordComm); ok {
				rc.r.add("END", 0) // Full's gathers are not a pass's
			}
		}
		g, err = m.Full(m.G)
		return outs, dxs, g, err
	}
	for _, c := range []struct {
		recompute bool
		gather    kernels.DType
	}{{false, kernels.F32}, {true, kernels.F32}, {true, kernels.BF16}} {
		recompute := c.recompute
		outs0, dxs0, g0, _ := run(whole, dev, recompute)
		var gmax float64
		for _, v := range g0 {
			gmax = max(gmax, math.Abs(float64(v)))
		}
		for _, N := range []int{1, 2, 3} {
			rec := &record{}
			type res struct {
				outs, dxs [][]float32
				g         []float32
			}
			got := make([]res, N)
			err := dist.Run(dist.Local(N), func(rank int, comm dist.Comm) error {
				var d kernels.Device = kernels.CPU()
				if rank == 0 {
					comm, d = recordComm{comm, rec}, recordDev{d, rec}
				}
				m := NewShardedGather(d, cfg, true, comm, c.gather)
				m.SetFull(wHost)
				outs, dxs, g, err := run(m, d, recompute)
				got[rank] = res{outs, dxs, g}
				if err == nil {
					err = m.Err()
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			what := fmt.Sprintf("recompute %v, gathered in %s, %d ranks", recompute, c.gather, N)
			for q := range got {
				for i := range cots {
					sameBits(t, fmt.Sprintf("%s: rank %d: pass %d: output", what, q, i), outs0[i], got[q].outs[i])
					sameBits(t, fmt.Sprintf("%s: rank %d: pass %d: dx", what, q, i), dxs0[i], got[q].dxs[i])
				}
			}
			var worst float64
			for i, v := range got[0].g {
				worst = max(worst, math.Abs(float64(v-g0[i])))
			}
			t.Logf("%s: parameter gradients: max |Δ| = %.3g (max |g| %.3g)", what, worst, gmax)
			if !(worst <= 1e-6*gmax) {
				t.Errorf("%s: parameter gradients differ from the whole DiT's by %.3g (max |g| %.3g)", what, worst, gmax)
			}

			// Prefetch: a gather whose wait comes with no compute between them was not prefetched.
			// Only the first gather of the run may be such (block 0 of the first forward).
			var late []int
			first := -1
			for i, e := range rec.log {
				if e.kind == "END" {
					break
				}
				if e.kind == "AG" && first < 0 {
					first = i
				}
				if e.kind != "AG" {
					continue
				}
				computed := false
				for _, f := range rec.log[i+1:] {
					if f.kind == "C" {
						computed = true
					}
					if f.kind == "W" && f.t >= e.t {
						break
					}
				}
				if !computed {
					late = append(late, i)
				}
			}
			if len(late) != 1 || late[0] != first {
				t.Errorf("%s: gathers at log entries %v were waited for with no compute in between (only the first, entry %d, block 0 of the first forward, may be)", what, late, first)
			}
		}
	}
}

// TestGradDone: the hook of a backward reports every range of G once, [0, P) in all, each when the
// backward has finished writing it (its values then are its values at the end), for Backward and
// for a BackwardHidden that stops below the top block; it serves one backward only.
func TestGradDone(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.Layers = 4, 4, 4
	B, F, H, W, L := 1, 2, 4, 2, 3
	C := cfg.InDim
	dev := kernels.CPU()
	m := New(dev, cfg, true)
	randomize(m, 21)
	rng := rand.New(rand.NewSource(22))
	x := devT(dev, randn(rng, B*C*F*H*W, 1), B, C, F, H, W)
	tt := devT(dev, randTimesteps(rng, B*F), B, F)
	ctx := devT(dev, randn(rng, B*L*cfg.TextDim, 1), B, L, cfg.TextDim)
	cot := devT(dev, randn(rng, B*C*F*H*W, 1), B, C, F, H, W)
	p := m.NewPass(Shape{B: B, F: F, H: H, W: W, L: L})
	defer p.Free()
	P := m.G.Numel()
	for _, hidden := range []bool{false, true} {
		m.ZeroGrad()
		m.Forward(p, x, tt, ctx)
		seen := make([]int, P)
		snap := map[[2]int][]float32{}
		m.GradDone = func(lo, hi int) {
			for i := lo; i < hi; i++ {
				seen[i]++
			}
			snap[[2]int{lo, hi}] = host(dev, m.G)[lo:hi]
		}
		if hidden {
			feat := devT(dev, randn(rng, B*F*(H/2)*(W/2)*cfg.Dim, 0.1), B, F*(H/2)*(W/2), cfg.Dim)
			m.BackwardHidden(p, nil, 1, feat)
		} else {
			m.Backward(p, cot)
		}
		if m.GradDone != nil {
			t.Fatal("GradDone still set after the backward")
		}
		for i, n := range seen {
			if n != 1 {
				t.Fatalf("hidden %v: G[%d] reported %d times, want once", hidden, i, n)
			}
		}
		end := host(dev, m.G)
		for r, v := range snap {
			sameBits(t, fmt.Sprintf("hidden %v: G[%d:%d] when reported vs at the end", hidden, r[0], r[1]), end[r[0]:r[1]], v)
		}
		if len(snap) != cfg.Layers+2 {
			t.Fatalf("hidden %v: %d ranges, want the %d blocks, the embeddings and the head", hidden, len(snap), cfg.Layers)
		}
	}
	n := m.Backwards()
	m.Backward(p, cot)
	if m.Backwards() != n+1 {
		t.Fatalf("Backwards() %d after one more backward, want %d", m.Backwards(), n+1)
	}
}
