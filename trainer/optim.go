package trainer

import (
	"math"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// run is a contiguous range [Off, Off+N) of a parameter buffer with one weight-decay setting.
type run struct {
	Off, N int
	Decay  bool
}

// decayRuns coalesces the table into contiguous runs of equal Decay, so AdamW is one op per run
// (a handful per model) instead of one per parameter. Each parameter owns its alignment padding up
// to the next parameter's offset; padding has zero weights and gradients and stays zero under AdamW.
func decayRuns(table []models.Param, P int) []run {
	var rs []run
	for i, p := range table {
		end := P
		if i+1 < len(table) {
			end = table[i+1].Offset
		}
		if len(rs) > 0 && rs[len(rs)-1].Decay == p.Decay && rs[len(rs)-1].Off+rs[len(rs)-1].N == p.Offset {
			rs[len(rs)-1].N = end - rs[len(rs)-1].Off
			continue
		}
		rs = append(rs, run{Off: p.Offset, N: end - p.Offset, Decay: p.Decay})
	}
	if len(table) == 0 && P > 0 {
		rs = append(rs, run{Off: 0, N: P, Decay: false})
	}
	return rs
}

// lrAt is the role's learning rate at optimizer step n (1-based) of total: linear warmup over
// `warmup` steps, then constant or cosine to 0 at the last step.
func lrAt(base float64, schedule string, warmup, n, total int) float64 {
	if warmup > 0 && n <= warmup {
		return base * float64(n) / float64(warmup)
	}
	if schedule == "cosine" && total > warmup {
		p := float64(n-warmup) / float64(total-warmup)
		return base * 0.5 * (1 + math.Cos(math.Pi*math.Min(p, 1)))
	}
	return base
}

// gradNorm makes a role's G, the sum over accum micro-batches, the mean gradient (G /= accum; on
// several ranks the mean over ranks, dist.go) and sets r.gnorm to its global L2 norm, which the clip
// and the non-finite guard (TrainStep) both read. Every rank gets the same norm (it is computed
// from the reduced gradient). With the whole gradient on this rank (no train.shard) the sum of
// squares is queued into the role's device accumulator (Device.SumSquares) and r.gnorm is set by
// readBack, which brings every role's sum (and the step's deferred losses) to the host in one copy: one synchronization per step
// for all roles, not one per role.
func (t *Trainer) gradNorm(r *role, accum int) error {
	if r.sh != nil {
		return t.gradNormSharded(r, accum)
	}
	if r.Net != nil && r.Net.Sharded() {
		return t.gradNormFSDP(r, accum)
	}
	dev := t.opt.Dev
	if t.comm != nil {
		if r.ov.armed { // launched during the last backward
			if err := t.settleOverlap(r); err != nil {
				return err
			}
		} else if err := t.allReduceGrads(r); err != nil {
			return err
		}
	}
	if accum > 1 {
		dev.Scale(r.G, float32(1/float64(accum)))
	}
	acc := t.sq.View(2*t.slot(r), 2)
	dev.Zero(acc)
	dev.SumSquares(acc, r.G) // = Dot(G, G), term for term
	t.sqPending = append(t.sqPending, r)
	return nil
}

// slot is r's index in t.roles: its accumulator in t.sq.
func (t *Trainer) slot(r *role) int {
	for i, q := range t.roles {
		if q == r {
			return i
		}
	}
	panic("trainer: role " + r.Spec.Name + " is not the trainer's")
}

// maxDeferred is how many losses a step may queue on the device (objectives.Step.Defer); more are
// read at once.
const maxDeferred = 32

// startReadback begins a step's readback: no role norm or loss queued yet.
func (t *Trainer) startReadback() {
	if t.sq == nil {
		t.sq = kernels.F64Acc(t.opt.Dev, len(t.roles)+maxDeferred)
	}
	t.sqPending, t.deferred = t.sqPending[:0], t.deferred[:0]
}

// deferSq is objectives.Step.Defer: Σ x² queued into the next free accumulator after the roles',
// set called by readBack; false when maxDeferred are queued already.
func (t *Trainer) deferSq(x *kernels.Tensor, set func(sq float64)) bool {
	if len(t.deferred) >= maxDeferred {
		return false
	}
	acc := t.sq.View(2*(len(t.roles)+len(t.deferred)), 2)
	t.opt.Dev.Zero(acc)
	t.opt.Dev.SumSquares(acc, x) // = Dot(x, x), term for term
	t.deferred = append(t.deferred, set)
	return true
}

// readBack brings the step's queued sums to the host in one copy: r.gnorm = √(Σ g²) of the roles
// gradNorm queued, and the deferred losses to their setters (in the order they were queued).
func (t *Trainer) readBack() {
	if len(t.sqPending) == 0 && len(t.deferred) == 0 {
		return
	}
	k := len(t.roles) + len(t.deferred)
	sq := make([]float64, k)
	kernels.ReadF64(t.opt.Dev, sq, t.sq.View(0, 2*k))
	for _, r := range t.sqPending {
		r.gnorm = math.Sqrt(sq[t.slot(r)])
	}
	for i, set := range t.deferred {
		set(sq[len(t.roles)+i])
	}
	t.sqPending, t.deferred = t.sqPending[:0], t.deferred[:0]
}

// update applies one optimizer step to a role after gradNorm: clip the global L2 norm to
// train.clip_norm (0 = off); AdamW per decay run (on this rank's slice under train.shard:
// optimizer, then the slices all-gathered).
func (t *Trainer) update(r *role, n int) error {
	if r.sh != nil {
		return t.updateSharded(r, n)
	}
	dev := t.opt.Dev
	if c := t.Job.Train.ClipNorm; c > 0 && r.gnorm > c {
		dev.Scale(r.G, float32(c/(r.gnorm+1e-6)))
	}
	r.lr = lrAt(r.cfg.LR, r.cfg.Schedule, r.cfg.Warmup, n, t.Job.Train.Steps)
	r.updates++
	t.adamW(r, 0, r.W.Numel(), func(o int) int { return o })
	if r.Net != nil {
		r.Net.Invalidate() // a sharded DiT gathers its blocks again
	}
	return nil
}

// adamW steps the parameters [lo, hi) of r (moments at local(offset)), per decay run, at r.lr and
// step count r.updates.
func (t *Trainer) adamW(r *role, lo, hi int, local func(int) int) {
	dev := t.opt.Dev
	b1, b2 := float32(r.cfg.Betas[0]), float32(r.cfg.Betas[1])
	for _, ru := range r.runs {
		a, b := max(ru.Off, lo), min(ru.Off+ru.N, hi)
		if a >= b {
			continue
		}
		wd := float32(0)
		if ru.Decay {
			wd = float32(r.cfg.WeightDecay)
		}
		mo := local(a)
		mv := r.G.View(a, b-a) // β1 = 0: G serves as m (firstMoment)
		if r.m != nil {
			mv = r.m.View(mo, b-a)
		}
		w := r.W.View(a, b-a)
		if r.master != nil { // the fp32 master weights of the slice (train.shard optimizer)
			w = r.master.View(mo, b-a)
		}
		dev.AdamW(w, r.G.View(a, b-a), mv, r.v.View(mo, b-a),
			float32(r.lr), b1, b2, float32(r.cfg.Eps), wd, r.updates)
	}
}

// gradNormSharded is gradNorm under train.shard: optimizer: G reduce-scattered onto this rank's
// slice (and the shared tail), the norm from the all-reduced sum of squares.
func (t *Trainer) gradNormSharded(r *role, accum int) error {
	dev, s := t.opt.Dev, r.sh
	if r.ov.armed { // reduced onto the slices during the last backward
		if err := t.settleOverlap(r); err != nil {
			return err
		}
	} else if err := t.reduceScatterGrads(r); err != nil {
		return err
	}
	if accum > 1 {
		for _, o := range s.owned() {
			dev.Scale(r.G.View(o[0], o[1]-o[0]), float32(1/float64(accum)))
		}
	}
	sq := []float64{0}
	if s.hi > s.lo {
		g := r.G.View(s.lo, s.hi-s.lo)
		sq[0] = dev.Dot(g, g)
	}
	if s.P > s.even && t.rank() == 0 { // the tail, counted once
		g := r.G.View(s.even, s.P-s.even)
		sq[0] += dev.Dot(g, g)
	}
	if err := t.sumHost(sq, dist.Sum); err != nil {
		return t.commErr("all-reduce of "+r.Spec.Name+"'s gradient norm", err)
	}
	r.gnorm = math.Sqrt(sq[0])
	return nil
}

// updateSharded is update under train.shard: optimizer: AdamW on the owned ranges, W's slices
// all-gathered.
func (t *Trainer) updateSharded(r *role, n int) error {
	dev, s := t.opt.Dev, r.sh
	owned := s.owned()
	if c := t.Job.Train.ClipNorm; c > 0 && r.gnorm > c {
		for _, o := range owned {
			dev.Scale(r.G.View(o[0], o[1]-o[0]), float32(c/(r.gnorm+1e-6)))
		}
	}
	r.lr = lrAt(r.cfg.LR, r.cfg.Schedule, r.cfg.Warmup, n, t.Job.Train.Steps)
	r.updates++
	for _, o := range owned {
		t.adamW(r, o[0], o[1], s.local)
		if r.master != nil { // the compute copy of the slice (bf16 on a GPU)
			dev.Copy(r.W.View(o[0], o[1]-o[0]), r.master.View(s.local(o[0]), o[1]-o[0]))
		}
	}
	return t.allGatherWeights(r)
}

// firstMoment reports whether a role's AdamW needs its first-moment buffer m. With β1 = 0
// (Self-Forcing's and DMD2's generator and critic) the update m = β1·m + (1−β1)·g is g, whatever m
// held: the gradient buffer is passed as m (the op reads and writes each element once, in place, so
// the result is the same bit for bit) and the role saves a parameter-sized fp32 buffer.
func firstMoment(cfg config.Role) bool { return len(cfg.Betas) < 1 || cfg.Betas[0] != 0 }

// localRuns is decayRuns for a sharded DiT's local buffer: the table's runs cut to the local
// ranges (models.DiT.LocalRanges) and moved to their local offsets; padding is not stepped.
func localRuns(table []models.Param, P int, ranges []models.LocalRange) []run {
	var out []run
	for _, lr := range ranges {
		for _, ru := range decayRuns(table, P) {
			a, b := max(ru.Off, lr.Full), min(ru.Off+ru.N, lr.Full+lr.N)
			if a < b {
				out = append(out, run{Off: lr.Local + a - lr.Full, N: b - a, Decay: ru.Decay})
			}
		}
	}
	return out
}

// gradNormFSDP is gradNorm under train.shard: full for a sharded DiT: the blocks' slices of G are
// already the mean over ranks (reduce-scattered after each block's backward, models/fsdp.go); the
// replicated embeddings and head are all-reduced here; the norm is the square root of the
// all-reduced sum of squares (the replicated part counted by rank 0). update then clips and steps
// AdamW on the local buffer as for a whole one.
func (t *Trainer) gradNormFSDP(r *role, accum int) error {
	dev := t.opt.Dev
	if err := r.Net.SettleGrads(); err != nil { // the last blocks' scatters, still in flight
		return t.commErr(r.Spec.Name+"'s gradient reduce-scatters", err)
	}
	rep := r.Net.Replicated()
	for _, o := range rep {
		for off := o[0]; off < o[1]; off += bucketElems {
			if err := t.comm.AllReduce(r.G.View(off, min(bucketElems, o[1]-off)), dist.Mean); err != nil {
				return t.commErr("all-reduce of "+r.Spec.Name+"'s embedding and head gradients", err)
			}
		}
	}
	if err := t.comm.Wait(); err != nil {
		return t.commErr("all-reduce of "+r.Spec.Name+"'s gradients", err)
	}
	if accum > 1 {
		dev.Scale(r.G, float32(1/float64(accum)))
	}
	sq := []float64{0}
	if lo, hi := rep[0][1], rep[1][0]; hi > lo { // the rank's slices of the blocks
		g := r.G.View(lo, hi-lo)
		sq[0] = dev.Dot(g, g)
	}
	if t.rank() == 0 { // the replicated part once
		for _, o := range rep {
			g := r.G.View(o[0], o[1]-o[0])
			sq[0] += dev.Dot(g, g)
		}
	}
	if err := t.sumHost(sq, dist.Sum); err != nil {
		return t.commErr("all-reduce of "+r.Spec.Name+"'s gradient norm", err)
	}
	r.gnorm = math.Sqrt(sq[0])
	return nil
}
