package trainer

// Data parallel and optimizer sharding (Options.Comm).
//
// A job on N ranks runs N trainers, one per rank, each with its own device, loader shard and Comm
// handle. Every rank draws its samples' randomness from their global index (objectives.StepSamples),
// so N ranks with batch B/N compute the gradients one rank with batch B would, split in N parts.
// After the last micro-batch of a step, for every role the objective updated:
//
//	train.shard none       G ← mean over ranks (all-reduce, block by block during the last backward,
//	                       or after the step in buckets); clip on the global norm; AdamW on the
//	                       whole buffer, identical on every rank.
//	train.shard optimizer  the buffer's first N·k elements (k = ⌊P/N⌋) are cut in N slices, rank r
//	                       owning [r·k, (r+1)·k), and the last P − N·k (< N) elements are owned by
//	                       all; G is reduced onto the slices' owners (during the last backward; or
//	                       reduce-scattered after the step; the tail all-reduced); the clip
//	                       norm is the square root of the all-reduced sum of the slices' squares;
//	                       AdamW runs on the rank's slice with moments m, v held only for it; the
//	                       slices of W are all-gathered. Moments: 8 bytes a parameter / N.
//
// The reduction runs during the backward whose gradients are final: on the last micro-batch an
// objective declares a network's last backward (objectives.Step.Last, before it starts it), and
// the trainer launches the reduction of each block's range of G as soon as that backward has
// written it (models.DiT.GradDone: an all-reduce; under optimizer a reduce onto each slice's
// owner, launchGrads), so the transfers run beside the blocks below and whatever the step does
// next; it waits once, before the norm. A role that is not a DiT (adversarial's discriminator head)
// or whose last backward is not declared is reduced after the step as before.
//
// Metrics are averaged over ranks; metrics.jsonl, checkpoints and validation are written by rank 0
// only; checkpoints hold whole buffers (the moments gathered from the slices), so a run resumes from
// them at any world size.

import (
	"fmt"
	"sort"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// bucketElems is the size of one gradient all-reduce (64 MiB of fp32).
const bucketElems = 16 << 20

// shard is a role's slice of its flat buffer under train.shard: optimizer.
type shard struct {
	P, k, even int // buffer size, slice size ⌊P/N⌋, N·k
	lo, hi     int // this rank's slice [lo, hi) = [r·k, (r+1)·k)
}

func newShard(P, rank, world int) *shard {
	k := P / world
	return &shard{P: P, k: k, even: world * k, lo: rank * k, hi: (rank + 1) * k}
}

// owned is the rank's ranges of the buffer: its slice and the shared tail.
func (s *shard) owned() [][2]int {
	var rs [][2]int
	if s.hi > s.lo {
		rs = append(rs, [2]int{s.lo, s.hi})
	}
	if s.P > s.even {
		rs = append(rs, [2]int{s.even, s.P})
	}
	return rs
}

// local is the moments' offset of buffer offset o (o in an owned range).
func (s *shard) local(o int) int {
	if o >= s.even {
		return s.hi - s.lo + o - s.even
	}
	return o - s.lo
}

// size is the moments' length: the slice plus the tail.
func (s *shard) size() int { return s.hi - s.lo + s.P - s.even }

func (t *Trainer) world() int {
	if t.comm == nil {
		return 1
	}
	return t.comm.Size()
}

func (t *Trainer) rank() int {
	if t.comm == nil {
		return 0
	}
	return t.comm.Rank()
}

// lead reports whether this rank writes the run's files (rank 0).
func (t *Trainer) lead() bool { return t.rank() == 0 }

func (t *Trainer) sharded() bool { return t.comm != nil && t.Job.Train.Shard == "optimizer" }

// fullShard: train.shard full on several ranks: every DiT role's blocks sharded (models/fsdp.go).
func (t *Trainer) fullShard() bool { return t.comm != nil && t.Job.Train.Shard == "full" }

// shardErr is the first collective error of a sharded DiT role.
func (t *Trainer) shardErr() error {
	for _, r := range t.roles {
		if r.Net != nil {
			if err := r.Net.Err(); err != nil {
				return fmt.Errorf("role %s: %w", r.Spec.Name, err)
			}
		}
	}
	return nil
}

// fullHost gathers a sharded DiT role's whole weights onto the host (a collective); nil for others.
func (t *Trainer) fullHost(r *role, buf *kernels.Tensor) ([]float32, error) {
	if r.Net == nil || !r.Net.Sharded() {
		return nil, nil
	}
	h, err := r.Net.Full(buf)
	if err != nil {
		return nil, fmt.Errorf("gathering %s: %w", r.Spec.Name, err)
	}
	return h, nil
}

func (t *Trainer) commErr(what string, err error) error {
	return fmt.Errorf("step %d: %s: %w", t.Step+1, what, err)
}

// overlap is a role's reduction launched during its last backward (lastBackward).
type overlap struct {
	armed    bool  // the objective declared the next backward the last
	at       int   // the network's Backwards() when armed
	launched bool  // the backward ran and issued the collectives
	err      error // the first collective error of the launch
}

// overlaps: the gradients of a declared last backward are reduced during it (train.shard none and
// optimizer; under full the blocks' scatters overlap in models/fsdp.go).
func (t *Trainer) overlaps() bool {
	return t.comm != nil && !t.fullShard()
}

// lastBackward is Step.LastBackward: the next backward into net is the last of the step, so its
// gradient ranges are all-reduced as the backward finishes them.
func (t *Trainer) lastBackward(net *models.DiT) {
	var r *role
	for _, q := range t.roles {
		if q.Net == net {
			r = q
		}
	}
	if r == nil || r.G == nil || net.Sharded() {
		return
	}
	if r.ov.armed { // declared twice: settleOverlap reports the extra backward
		return
	}
	r.ov = overlap{armed: true, at: net.Backwards()}
	net.GradDone = func(lo, hi int) {
		r.ov.launched = true
		if r.ov.err == nil {
			r.ov.err = t.launchGrads(r, lo, hi)
		}
	}
}

// launchGrads issues the reduction (mean over ranks) of G's range [lo, hi), in pieces of at most
// bucketElems: an all-reduce (train.shard none), or under train.shard optimizer a reduce onto the
// owner of each slice it crosses (the shared tail all-reduced), which leaves on every rank what
// the reduce-scatter after the backward left (the same sums in the same order on dist.Local).
func (t *Trainer) launchGrads(r *role, lo, hi int) error {
	pieces := func(a, b int, f func(off, n int) error) error {
		for off := a; off < b; off += bucketElems {
			if err := f(off, min(bucketElems, b-off)); err != nil {
				return err
			}
		}
		return nil
	}
	allReduce := func(off, n int) error { return t.comm.AllReduce(r.G.View(off, n), dist.Mean) }
	s := r.sh
	var err error
	if s == nil {
		err = pieces(lo, hi, allReduce)
	} else {
		for a := lo; a < hi && err == nil; {
			if a >= s.even { // the tail, owned by every rank
				err = pieces(a, hi, allReduce)
				break
			}
			q := a / s.k // the owner of [q·k, (q+1)·k)
			b := min(hi, (q+1)*s.k)
			err = pieces(a, b, func(off, n int) error { return t.comm.Reduce(r.G.View(off, n), dist.Mean, q) })
			a = b
		}
	}
	if err != nil {
		return t.commErr("reduction of "+r.Spec.Name+"'s gradients", err)
	}
	return nil
}

// settleOverlap makes the compute wait for a role's reduction launched during its last backward
// (nothing if none was armed) and checks that the objective ran exactly that one backward after
// declaring it.
func (t *Trainer) settleOverlap(r *role) error {
	ov := r.ov
	if !ov.armed {
		return nil
	}
	r.ov = overlap{}
	if r.Net.GradDone != nil { // armed, but no backward followed
		r.Net.GradDone = nil
	}
	if ov.err != nil {
		return ov.err
	}
	if err := t.comm.Wait(); err != nil {
		return t.commErr("all-reduce of "+r.Spec.Name+"'s gradients", err)
	}
	if n := r.Net.Backwards() - ov.at; n != 1 || !ov.launched {
		return fmt.Errorf("step %d: objective %s declared a backward into %s the last of the micro-batch (objectives.Step.Last) and ran %d backwards after it, want 1", t.Step+1, t.Obj.Name(), r.Spec.Name, n)
	}
	return nil
}

// allReduceGrads averages a role's G over the ranks, in buckets.
func (t *Trainer) allReduceGrads(r *role) error {
	P := r.G.Numel()
	for off := 0; off < P; off += bucketElems {
		n := min(bucketElems, P-off)
		if err := t.comm.AllReduce(r.G.View(off, n), dist.Mean); err != nil {
			return t.commErr("all-reduce of "+r.Spec.Name+"'s gradients", err)
		}
	}
	return t.comm.Wait()
}

// reduceScatterGrads leaves the ranks' mean of G on this rank's slice and the tail.
func (t *Trainer) reduceScatterGrads(r *role) error {
	s := r.sh
	if s.k > 0 {
		if err := t.comm.ReduceScatter(r.G.View(s.lo, s.k), r.G.View(0, s.even), dist.Mean); err != nil {
			return t.commErr("reduce-scatter of "+r.Spec.Name+"'s gradients", err)
		}
	}
	if s.P > s.even {
		if err := t.comm.AllReduce(r.G.View(s.even, s.P-s.even), dist.Mean); err != nil {
			return t.commErr("all-reduce of "+r.Spec.Name+"'s gradient tail", err)
		}
	}
	return t.comm.Wait()
}

// setMaster fills a role's master slice (train.shard optimizer) from whole fp32 weights in the
// table's layout (host), or from W when host is nil (bf16 values if W is bf16).
func (r *role) setMaster(host []float32) {
	dev := r.W.Dev
	for _, o := range r.sh.owned() {
		dst := r.master.View(r.sh.local(o[0]), o[1]-o[0])
		if host != nil {
			dev.FromHost(dst, host[o[0]:o[1]])
		} else {
			dev.Copy(dst, r.W.View(o[0], o[1]-o[0])) // [n] fp32 from W's dtype
		}
	}
}

// copyMaster fills dst (a whole buffer of src's layout) from the slices of src's master weights on
// every rank (a collective), then makes the compute wait for it when wait.
func (t *Trainer) copyMaster(dst *kernels.Tensor, src *role, wait bool) error {
	s := src.sh
	for _, o := range s.owned() {
		t.opt.Dev.Copy(dst.View(o[0], o[1]-o[0]), src.master.View(s.local(o[0]), o[1]-o[0]))
	}
	if s.k == 0 {
		return nil
	}
	if err := t.comm.AllGather(dst.View(0, s.even), dst.View(s.lo, s.k)); err != nil {
		return t.commErr("all-gather of "+src.Spec.Name+"'s master weights", err)
	}
	if wait {
		return t.comm.Wait()
	}
	return nil
}

// follower is an EMA of the student: the "ema" role, or a role declared with RoleSpec.Follow.
type follower struct {
	r     *role
	decay float32
}

// follows says whether a role is an EMA of the student (fp32 weights that the trainer writes).
func follows(s objectives.RoleSpec) bool { return s.Name == objectives.EMA || s.Follow > 0 }

// updateEMA makes the follower f follow the student r after its update (copy: before ema_start).
// With the student's master weights in slices (train.shard optimizer) each rank updates f's part
// of its slice from its master and the slices are all-gathered: the EMA of the fp32 weights, as
// without sharding, not of their bf16 compute copy.
func (t *Trainer) updateEMA(f follower, r *role, copy bool) error {
	dev, dst := t.opt.Dev, f.r.W
	if r.master == nil {
		if copy {
			dev.Copy(dst, r.W)
		} else {
			dev.EMA(dst, r.W, f.decay)
		}
		return nil
	}
	s := r.sh
	for _, o := range s.owned() {
		e, w := dst.View(o[0], o[1]-o[0]), r.master.View(s.local(o[0]), o[1]-o[0])
		if copy {
			dev.Copy(e, w)
		} else {
			dev.EMA(e, w, f.decay)
		}
	}
	if s.k == 0 {
		return nil
	}
	if err := t.comm.AllGather(dst.View(0, s.even), dst.View(s.lo, s.k)); err != nil {
		return t.commErr("all-gather of the "+f.r.Spec.Name+"'s slices", err)
	}
	return t.comm.Wait()
}

// allGatherWeights puts every rank's updated slice of W on every rank.
func (t *Trainer) allGatherWeights(r *role) error {
	s := r.sh
	if s.k == 0 {
		return nil
	}
	if err := t.comm.AllGather(r.W.View(0, s.even), r.W.View(s.lo, s.k)); err != nil {
		return t.commErr("all-gather of "+r.Spec.Name+"'s weights", err)
	}
	return t.comm.Wait()
}

// sumHost all-reduces host values (Sum or Mean) through a device tensor; they travel as fp32.
func (t *Trainer) sumHost(v []float64, op dist.Op) error {
	if len(v) == 0 {
		return nil
	}
	dev := t.opt.Dev
	if t.scalars == nil || t.scalars.Numel() < len(v) {
		if t.scalars != nil {
			dev.Free(t.scalars)
		}
		t.scalars = dev.Alloc(kernels.F32, max(len(v), 64))
	}
	buf := t.scalars.View(0, len(v))
	h := make([]float32, len(v))
	for i, x := range v {
		h[i] = float32(x)
	}
	dev.FromHost(buf, h)
	if err := t.comm.AllReduce(buf, op); err != nil {
		return err
	}
	if err := t.comm.Wait(); err != nil {
		return err
	}
	dev.ToHost(h, buf)
	for i := range v {
		v[i] = float64(h[i])
	}
	return nil
}

// reduceMetrics averages the step's metrics over the ranks (every rank reports the same keys).
func (t *Trainer) reduceMetrics(m map[string]float64) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	v := make([]float64, len(keys))
	for i, k := range keys {
		v[i] = m[k]
	}
	if err := t.sumHost(v, dist.Mean); err != nil {
		return t.commErr(fmt.Sprintf("averaging the metrics %v", keys), err)
	}
	for i, k := range keys {
		m[k] = v[i]
	}
	return nil
}

// barrier returns when every rank has reached it.
func (t *Trainer) barrier(what string) error {
	if t.comm == nil {
		return nil
	}
	if err := t.sumHost([]float64{1}, dist.Sum); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// anyStopped agrees on Options.Stop across the ranks: true when any rank saw it.
func (t *Trainer) anyStopped() (bool, error) {
	s := t.stopped()
	if t.comm == nil {
		return s, nil
	}
	v := []float64{0}
	if s {
		v[0] = 1
	}
	if err := t.sumHost(v, dist.Sum); err != nil {
		return false, fmt.Errorf("step %d: agreeing on a stop: %w", t.Step, err)
	}
	return v[0] > 0, nil
}

// gatherMoments returns a sharded role's whole m and v on the host (every rank takes part; the
// result is meant for rank 0); m is nil without a first moment (optim.go firstMoment).
func (t *Trainer) gatherMoments(r *role) (m, v []float32, err error) {
	if r.m != nil {
		if m, err = t.gatherSliced(r, r.m, "AdamW moments"); err != nil {
			return nil, nil, err
		}
	}
	if v, err = t.gatherSliced(r, r.v, "AdamW moments"); err != nil {
		return nil, nil, err
	}
	return m, v, nil
}

// gatherSliced returns the whole buffer of which src (moments layout: the rank's slice, then the
// shared tail) holds this rank's part, on the host of every rank, gathered slice by slice in pieces
// of bucketElems/N (a collective).
func (t *Trainer) gatherSliced(r *role, src *kernels.Tensor, what string) ([]float32, error) {
	s, dev, N := r.sh, t.opt.Dev, t.world()
	dst := make([]float32, s.P)
	piece := max(bucketElems/N, 1)
	tmp := dev.Alloc(kernels.F32, N*min(piece, max(s.k, 1)))
	defer dev.Free(tmp)
	host := make([]float32, tmp.Numel())
	for off := 0; off < s.k; off += piece {
		n := min(piece, s.k-off)
		out := tmp.View(0, N*n)
		if err := t.comm.AllGather(out, src.View(off, n)); err != nil {
			return nil, fmt.Errorf("gathering %s's %s: %w", r.Spec.Name, what, err)
		}
		if err := t.comm.Wait(); err != nil {
			return nil, err
		}
		dev.ToHost(host[:N*n], out)
		for q := 0; q < N; q++ {
			copy(dst[q*s.k+off:], host[q*n:(q+1)*n])
		}
	}
	if tail := s.P - s.even; tail > 0 {
		dev.ToHost(dst[s.even:], src.View(s.hi-s.lo, tail))
	}
	return dst, nil
}
