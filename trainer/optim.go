package trainer

import (
	"fmt"
	"math"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
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
// squares is queued into the role's device accumulator (Device.SumSquares); on one rank the gate
// (launchGated) reads it on the device and r.gnorm is set when the step settles (settleGated), on
// several by readBack, which brings every role's sum (and the step's deferred losses) to the host
// in one copy: one synchronization per step for all roles, not one per role.
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

// startReadback begins a step's readback: no role norm or loss queued yet. The accumulators and
// the gate are one device buffer, so that one copy brings both back.
func (t *Trainer) startReadback() {
	if t.sq == nil {
		R := len(t.roles)
		t.sqBuf = t.opt.Dev.Alloc(kernels.F32, 2*(R+maxDeferred)+kernels.GateLen(R)) // zeroed: every step count 0
		t.sq, t.gate = t.sqBuf.View(0, 2*(R+maxDeferred)), t.sqBuf.View(2*(R+maxDeferred), kernels.GateLen(R))
		t.gateHost = true
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

// readBack (several ranks: the host path of launch) brings the step's queued sums to the host in one copy: r.gnorm = √(Σ g²) of the roles
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
	t.adamW(r, 0, r.W.Numel(), func(o int) int { return o }, nil)
	if r.Net != nil {
		r.Net.Invalidate() // a sharded DiT gathers its blocks again
	}
	return nil
}

// adamW steps the parameters [lo, hi) of r (moments at local(offset)), per decay run, at r.lr and
// step count r.updates; with a gate (launchGated) at the gate's count and clip, when it says ok.
func (t *Trainer) adamW(r *role, lo, hi int, local func(int) int, gate *kernels.Tensor) {
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
		if gate != nil {
			dev.AdamWGated(w, r.G.View(a, b-a), mv, r.v.View(mo, b-a), gate, t.slot(r),
				float32(r.lr), b1, b2, float32(r.cfg.Eps), wd)
			continue
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
		t.adamW(r, o[0], o[1], s.local, nil)
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

// The optimizer step gated on the device (issue 14: no host round trip in the step). With a
// single rank, launch queues, after the roles' Σ g² and the deferred losses:
//
//	StepGate   ok = every updated role's Σ g² and every deferred loss finite (and the losses the
//	           host already has); per role the clip factor and, when ok, its AdamW step count + 1
//	AdamWGated per decay run of every updated role: nothing when not ok, else AdamW on g·clip at
//	           the gate's count (no Scale pass over G)
//	EMAGated   the followers of the student, when ok
//	ReadAsync  the accumulators and the gate, into pinned host memory behind the step
//
// and returns without waiting. settle (TrainStep at once; Run one step later, when the readback
// has long arrived) takes the values: gradient norms and losses for the metrics, the bad-step
// count and ErrDiverged. The host repeats the gate's test on the same values (badOf), and the two
// must agree. On several ranks (the metrics are all-reduced on the host, and train.shard keeps
// its norm on the host: gradNormSharded, gradNormFSDP) the step reads back and updates from the
// host as before (launch).

// pendingStep is a launched step whose metrics are not yet settled.
type pendingStep struct {
	n        int
	micros   []map[string]float64 // each micro-batch's metrics; deferred losses land in them at settle
	updated  map[string]bool
	lr       map[string]float64 // the updated roles' learning rates (r.lr moves on with the next launch)
	sqRoles  []*role            // roles whose Σ g² waits in the readback
	deferred []func(float64)    // setters of the deferred losses, in queue order
	rb       kernels.Readback   // nil: settled on the host (several ranks)
	metrics  map[string]float64
	skipped  bool
	err      error // ErrDiverged of a skipped step
}

// gated reports whether the optimizer step runs gated on the device: a single rank.
func (t *Trainer) gated() bool { return t.comm == nil }

// launchGated queues the gate, the gated updates and the readback of a step (the block comment
// above).
func (t *Trainer) launchGated(p *pendingStep) {
	dev, job := t.opt.Dev, t.Job
	R := len(t.roles)
	if t.gateHost { // the counts of a resumed run (or the zeros of a new one)
		h := make([]float32, kernels.GateLen(R))
		for i, r := range t.roles {
			kernels.SetGateCount(h, i, r.updates)
		}
		dev.FromHost(t.gate, h)
		t.gateHost = false
	}
	hostOK := true // the losses the objective read at once
	for _, um := range p.micros {
		for _, v := range um {
			hostOK = hostOK && finite(v)
		}
	}
	var mask uint32
	for _, r := range t.sqPending {
		mask |= 1 << t.slot(r)
	}
	dev.StepGate(t.gate, t.sq, mask, R, len(t.deferred), job.Train.ClipNorm, hostOK)
	for _, r := range t.roles { // build order: deterministic
		if !p.updated[r.Spec.Name] {
			continue
		}
		r.lr = lrAt(r.cfg.LR, r.cfg.Schedule, r.cfg.Warmup, p.n, job.Train.Steps)
		p.lr[r.Spec.Name] = r.lr
		t.adamW(r, 0, r.W.Numel(), func(o int) int { return o }, t.gate)
		if r.Net != nil {
			r.Net.Invalidate()
		}
		if r == t.emaOf {
			for _, f := range t.followers {
				decay := f.decay
				if p.n < job.Roles[objectives.Student].EMAStart {
					decay = 0 // a copy before ema_start
				}
				dev.EMAGated(f.r.W, r.W, t.gate, decay)
				if f.r.Net != nil {
					f.r.Net.Invalidate()
				}
			}
		}
	}
	p.sqRoles = append([]*role(nil), t.sqPending...)
	p.deferred = append([]func(float64){}, t.deferred...)
	t.sqPending, t.deferred = t.sqPending[:0], t.deferred[:0]
	p.rb = dev.ReadAsync(t.sqBuf)
	t.inflight++
}

// settleGated waits for a gated step's readback (long arrived when Run settles it a step late),
// sets the norms and deferred losses, and counts the step: AdamW's step count of each updated role
// when the gate said ok, a bad step when not.
func (t *Trainer) settleGated(p *pendingStep) error {
	R := len(t.roles)
	h := make([]float32, t.sqBuf.Numel())
	err := p.rb.Wait(h)
	p.rb = nil
	t.inflight--
	if err != nil {
		return fmt.Errorf("step %d: reading back its losses and gradient norms: %w", p.n, err)
	}
	sq := make([]float64, R+len(p.deferred))
	kernels.ReadF64Host(sq, h[:2*len(sq)])
	for _, r := range p.sqRoles {
		r.gnorm = math.Sqrt(sq[t.slot(r)])
	}
	for i, set := range p.deferred {
		set(sq[R+i])
	}
	p.metrics = meanMetrics(p.micros)
	bad := t.badOf(p.metrics, p)
	gate := h[2*(R+maxDeferred):]
	if _, dry := t.opt.Dev.(*models.DryDevice); !dry && kernels.GateOK(gate) != (len(bad) == 0) {
		return fmt.Errorf("step %d: the device's gate (ok = %v) and the host's guard (%d values not finite: %v) disagree (internal)",
			p.n, kernels.GateOK(gate), len(bad), bad)
	}
	p.skipped = len(bad) > 0
	if p.skipped {
		p.err = t.countBad(p, bad)
		return nil
	}
	for _, r := range t.roles {
		if p.updated[r.Spec.Name] {
			r.updates++ // the device's count, gate[3+2i], took the same step
			p.metrics["lr/"+r.Spec.Name] = p.lr[r.Spec.Name]
		}
	}
	return nil
}
