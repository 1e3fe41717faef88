package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
)

// RankComm is one rank's NCCL communicator, a dist.Comm: the rank's GPU (a Device of this process),
// the NCCL communicator of that rank and a communication stream on the GPU. The trainer of a job on
// N GPUs holds N of them, one per goroutine (NewLocalRanks: every GPU of this process; NewRanks:
// this process's GPUs of a job that spans several processes, from the unique id the rendezvous
// handed out, dist/rendezvous.go).
//
// Ordering (docs/multi-gpu.md): a collective records an event on the compute stream, makes the
// communication stream wait for it and queues the NCCL call there, then records a "done" event on
// the communication stream. It returns at once, so the compute that follows (the rest of backward)
// overlaps with the transfer. Wait makes the compute stream wait for the last done event (on the
// GPU, the host does not wait); WaitFor(t) for the done event of the last collective before ticket
// t (Mark), so the later ones stay in flight (the communication stream runs the collectives in
// order). Until a wait covers it, the compute must leave the tensors of a collective in flight alone
// (neither read, write nor free them).
//
// Failure: a watchdog goroutine polls ncclCommGetAsyncError, the liveness signal (RankOptions.Alive:
// the rendezvous's connections to the other processes) and the age of the oldest collective not yet
// done (cuEventQuery). On an error, a dead peer or a collective older than RankOptions.Timeout it
// aborts the communicator (ncclCommAbort: NCCL's kernels return, so a host blocked in the device's
// Sync wakes up) and every later call returns the error, which names this rank and the cause.
type RankComm struct {
	nc   *ncclLib
	d    *Device
	rank int
	size int
	o    RankOptions

	comm    atomic.Uintptr // ncclComm_t; 0 once aborted or destroyed
	stream  uintptr        // the communication stream
	compute uintptr        // event: the compute stream's position at the latest collective

	mu      sync.Mutex
	pending []pendingColl // collectives queued and not seen done, oldest first
	events  []uintptr     // done events to reuse
	issued  uint64        // collectives queued so far (the ticket of Mark)
	waited  uint64        // the compute stream waits for the collectives up to this one already
	failed  error         // final: set by a failed call, the watchdog or Abort
	closed  bool

	watching bool // the watchdog was started

	stop chan struct{} // closes the watchdog
	done chan struct{} // the watchdog has returned
}

type pendingColl struct {
	seq   uint64 // 1, 2, …: the collective's place in the rank's sequence
	ev    uintptr
	what  string
	since time.Time
}

// RankOptions bound how long a rank waits for the others.
type RankOptions struct {
	// Timeout: a collective not done this long after it was queued aborts the communicator
	// (default 10 minutes, as PyTorch's NCCL process group).
	Timeout time.Duration
	// Poll is the watchdog's period (default 200 ms).
	Poll time.Duration
	// Alive, when set, is polled with the rest: an error (a peer process that died) aborts the
	// communicator with that error.
	Alive func() error
}

func (o RankOptions) withDefaults() RankOptions {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	return o
}

var _ dist.Comm = (*RankComm)(nil)

// NCCLUniqueIDBytes is the size of ncclUniqueId (NCCL_UNIQUE_ID_BYTES).
const NCCLUniqueIDBytes = 128

// NCCLUniqueID makes the id that names a new communicator (ncclGetUniqueId). The process that makes
// it hosts NCCL's bootstrap; every rank of the job passes the same id to NewRanks.
func NCCLUniqueID() ([]byte, error) {
	nc, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	return nc.uniqueID()
}

func (nc *ncclLib) uniqueID() ([]byte, error) {
	var id [NCCLUniqueIDBytes]byte
	if err := nc.call("ncclGetUniqueId", nc.getUniqueId, uintptr(unsafe.Pointer(&id[0]))); err != nil {
		return nil, err
	}
	return id[:], nil
}

// NewLocalRanks makes a communicator of devs (distinct GPUs of this process; rank i is devs[i]) and
// returns one RankComm per rank, for one goroutine each.
func NewLocalRanks(devs []*Device, o RankOptions) ([]*RankComm, error) {
	nc, err := ranksLib(devs)
	if err != nil {
		return nil, err
	}
	id, err := nc.uniqueID()
	if err != nil {
		return nil, err
	}
	return newRanks(nc, devs, id, len(devs), 0, o)
}

// NewRanks makes this process's ranks first, first+1, … of a communicator of nranks ranks over
// several processes, named by id (NCCLUniqueID on the first process, handed to every process by the
// rendezvous): devs[i] is rank first+i. Every process of the job must call it; it returns when all
// have (NCCL's bootstrap).
func NewRanks(devs []*Device, id []byte, nranks, first int, o RankOptions) ([]*RankComm, error) {
	if len(id) != NCCLUniqueIDBytes {
		return nil, fmt.Errorf("nccl: unique id of %d bytes, want %d", len(id), NCCLUniqueIDBytes)
	}
	if first < 0 || first+len(devs) > nranks {
		return nil, fmt.Errorf("nccl: ranks %d..%d of a communicator of %d", first, first+len(devs)-1, nranks)
	}
	nc, err := ranksLib(devs)
	if err != nil {
		return nil, err
	}
	return newRanks(nc, devs, id, nranks, first, o)
}

// ranksLib checks devs as NewComm does and opens NCCL.
func ranksLib(devs []*Device) (*ncclLib, error) {
	if len(devs) == 0 {
		return nil, fmt.Errorf("nccl: no devices")
	}
	for i, d := range devs {
		if d == nil {
			return nil, fmt.Errorf("nccl: device %d is nil", i)
		}
		for j := 0; j < i; j++ {
			if devs[j].Ordinal == d.Ordinal {
				return nil, fmt.Errorf("nccl: GPU %d given twice (local ranks %d and %d)", d.Ordinal, j, i)
			}
		}
		if d.err != nil {
			return nil, fmt.Errorf("nccl: GPU %d has failed earlier: %w", d.Ordinal, d.err)
		}
	}
	nc, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	nvlsOff()
	return nc, nil
}

// newRanks is NewRanks after the checks, on the library nc: ncclCommInitRank for every device in
// one group on one OS thread (NCCL's way for one thread driving several GPUs), each with its
// device's context current.
func newRanks(nc *ncclLib, devs []*Device, id []byte, nranks, first int, o RankOptions) ([]*RankComm, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	o = o.withDefaults()
	comms := make([]uintptr, len(devs))
	var idv [NCCLUniqueIDBytes]byte
	copy(idv[:], id)
	if err := nc.call("ncclGroupStart", nc.groupStart); err != nil {
		return nil, err
	}
	var first0 error
	for i, d := range devs {
		if err := d.drv.call("cuCtxSetCurrent", d.drv.cuCtxSetCurrent, d.ctx); err != nil {
			first0 = err
			break
		}
		if err := nc.initRank(&comms[i], nranks, first+i, &idv); err != nil {
			first0 = fmt.Errorf("rank %d (GPU %d) of %d: %w", first+i, d.Ordinal, nranks, err)
			break
		}
	}
	if err := nc.call("ncclGroupEnd(ncclCommInitRank)", nc.groupEnd); err != nil && first0 == nil {
		first0 = err
	}
	rs := make([]*RankComm, 0, len(devs))
	cleanup := func() {
		for _, r := range rs {
			r.shut(true)
		}
		for _, cm := range comms[len(rs):] {
			if cm != 0 {
				nc.call("ncclCommAbort", nc.commAbort, cm)
			}
		}
	}
	if first0 != nil {
		cleanup()
		return nil, first0
	}
	for i, d := range devs {
		var dev, rank, count int32
		err := nc.call("ncclCommCuDevice", nc.commCuDevice, comms[i], uintptr(unsafe.Pointer(&dev)))
		if err == nil {
			err = nc.call("ncclCommUserRank", nc.commUserRank, comms[i], uintptr(unsafe.Pointer(&rank)))
		}
		if err == nil {
			err = nc.call("ncclCommCount", nc.commCount, comms[i], uintptr(unsafe.Pointer(&count)))
		}
		if err == nil && (int(dev) != d.Ordinal || int(rank) != first+i || int(count) != nranks) {
			err = fmt.Errorf("nccl: communicator %d is on CUDA device %d as rank %d of %d, want GPU %d as rank %d of %d", i, dev, rank, count, d.Ordinal, first+i, nranks)
		}
		r := &RankComm{nc: nc, d: d, rank: first + i, size: nranks, o: o, stop: make(chan struct{}), done: make(chan struct{})}
		r.comm.Store(comms[i])
		if err == nil {
			err = d.drv.call("cuCtxSetCurrent", d.drv.cuCtxSetCurrent, d.ctx)
		}
		if err == nil {
			err = d.drv.call("cuStreamCreate(communication stream)", d.drv.cuStreamCreate, uintptr(unsafe.Pointer(&r.stream)), streamNonBlocking)
		}
		if err == nil {
			err = d.drv.call("cuEventCreate", d.drv.cuEventCreate, uintptr(unsafe.Pointer(&r.compute)), eventDisableTiming)
		}
		rs = append(rs, r)
		if err != nil {
			cleanup()
			return nil, err
		}
	}
	for _, r := range rs {
		r.watching = true
		go r.watch()
	}
	return rs, nil
}

const (
	eventDisableTiming = 2   // CU_EVENT_DISABLE_TIMING
	cuErrNotReady      = 600 // CUDA_ERROR_NOT_READY
	ncclInProgress     = 7   // ncclInProgress: an asynchronous operation still running, no error
)

func (c *RankComm) Rank() int { return c.rank }
func (c *RankComm) Size() int { return c.size }

// Device is the rank's GPU.
func (c *RankComm) Device() *Device { return c.d }

// AllReduce replaces t by the reduction over every rank, in place.
func (c *RankComm) AllReduce(t *kernels.Tensor, op dist.Op) error {
	return c.collective("AllReduce", t, t, op, -1)
}

// ReduceScatter leaves this rank's slice of the reduction of in ([Size()·k]) in out ([k]).
func (c *RankComm) ReduceScatter(out, in *kernels.Tensor, op dist.Op) error {
	return c.collective("ReduceScatter", out, in, op, -1)
}

// AllGather concatenates every rank's in ([k]) into out ([Size()·k]) in rank order.
func (c *RankComm) AllGather(out, in *kernels.Tensor) error {
	return c.collective("AllGather", out, in, 0, -1)
}

// Reduce replaces root's t by the reduction over every rank, in place; the other ranks' t are read.
func (c *RankComm) Reduce(t *kernels.Tensor, op dist.Op, root int) error {
	if root < 0 || root >= c.size {
		return fmt.Errorf("nccl: Reduce(rank %d of %d): root %d: want a rank in [0, %d)", c.rank, c.size, root, c.size)
	}
	return c.collective("Reduce", t, t, op, root)
}

// Broadcast copies root's t into every rank's t.
func (c *RankComm) Broadcast(t *kernels.Tensor, root int) error {
	if root < 0 || root >= c.size {
		return fmt.Errorf("nccl: Broadcast(rank %d of %d): root %d: want a rank in [0, %d)", c.rank, c.size, root, c.size)
	}
	return c.collective("Broadcast", t, t, 0, root)
}

// ncclDType is NCCL's code for a tensor dtype.
func ncclDType(dt kernels.DType) (uintptr, bool) {
	switch dt {
	case kernels.F32:
		return ncclFloat32, true
	case kernels.BF16:
		return ncclBfloat16, true
	case kernels.F16:
		return ncclFloat16, true
	}
	return 0, false
}

// err is the communicator's final error, if any (under mu).
func (c *RankComm) errLocked(what string) error {
	if c.failed != nil {
		return c.failed
	}
	if c.closed {
		return fmt.Errorf("nccl: rank %d: %s on a closed communicator", c.rank, what)
	}
	return nil
}

// collective checks the tensors and queues one NCCL call on the communication stream, after the
// compute queued so far.
func (c *RankComm) collective(name string, out, in *kernels.Tensor, op dist.Op, root int) error {
	what := fmt.Sprintf("%s(rank %d of %d", name, c.rank, c.size)
	if out != nil {
		what += fmt.Sprintf(", %s %v", out.DType, out.Shape)
	}
	what += ")"
	if out == nil || in == nil {
		return fmt.Errorf("nccl: %s: nil tensor", what)
	}
	for _, t := range []*kernels.Tensor{out, in} {
		if g, ok := t.Dev.(*Device); !ok || g != c.d {
			return fmt.Errorf("nccl: %s: tensor %v is not on this rank's GPU %d", what, t, c.d.Ordinal)
		}
		if t.Numel() > 0 && t.Ptr == 0 {
			return fmt.Errorf("nccl: %s: tensor %v has no device memory (freed, or its Alloc failed)", what, t)
		}
	}
	if in.DType != out.DType {
		return fmt.Errorf("nccl: %s: in is %s, out is %s: want one dtype", what, in.DType, out.DType)
	}
	dtype, ok := ncclDType(out.DType)
	if !ok {
		return fmt.Errorf("nccl: %s: dtype %s not supported", what, out.DType)
	}
	var redOp uintptr = ncclSum
	switch op {
	case dist.Sum:
	case dist.Mean:
		redOp = ncclAvg
	default:
		return fmt.Errorf("nccl: %s: unknown reduction %d", what, op)
	}
	count := out.Numel() // AllReduce, Broadcast, ReduceScatter: the elements of out
	switch name {
	case "ReduceScatter":
		if in.Numel() != c.size*out.Numel() {
			return fmt.Errorf("nccl: %s: in has %d elements, want Size()·%d = %d", what, in.Numel(), out.Numel(), c.size*out.Numel())
		}
	case "AllGather":
		if out.Numel() != c.size*in.Numel() {
			return fmt.Errorf("nccl: %s: out has %d elements, want Size()·%d = %d", what, out.Numel(), in.Numel(), c.size*in.Numel())
		}
		count = in.Numel()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.errLocked(name); err != nil {
		return err
	}
	if count == 0 {
		return nil
	}
	d := c.d
	if d.capturing {
		return fmt.Errorf("nccl: %s during graph capture on GPU %d (not supported)", what, d.Ordinal)
	}
	// The device's bookkeeping: an earlier failure stops here; the bf16 copies of out go stale.
	ok = d.enterW(out)
	if ok {
		d.touch(out)
	}
	defer d.leave()
	if !ok {
		return fmt.Errorf("nccl: %s: GPU %d has failed earlier: %w", what, d.Ordinal, d.err)
	}
	// compute → communication stream, the call, then the done event.
	if err := d.drv.call("cuEventRecord(compute)", d.drv.cuEventRecord, c.compute, d.stream); err != nil {
		return c.failLocked(err)
	}
	if err := d.drv.call("cuStreamWaitEvent(communication after compute)", d.drv.cuStreamWaitEvent, c.stream, c.compute, 0); err != nil {
		return c.failLocked(err)
	}
	cm := c.comm.Load()
	if cm == 0 { // aborted by the watchdog between the check and here
		return c.errLocked(name)
	}
	nc := c.nc
	var err error
	switch name {
	case "AllReduce": // ncclAllReduce(send, recv, count, datatype, op, comm, stream)
		err = nc.call("ncclAllReduce", nc.allReduce, in.Ptr, out.Ptr, uintptr(count), dtype, redOp, cm, c.stream)
	case "ReduceScatter": // ncclReduceScatter(send, recv, recvcount, datatype, op, comm, stream)
		err = nc.call("ncclReduceScatter", nc.reduceScatter, in.Ptr, out.Ptr, uintptr(count), dtype, redOp, cm, c.stream)
	case "AllGather": // ncclAllGather(send, recv, sendcount, datatype, comm, stream)
		err = nc.call("ncclAllGather", nc.allGather, in.Ptr, out.Ptr, uintptr(count), dtype, cm, c.stream)
	case "Reduce": // ncclReduce(send, recv, count, datatype, op, root, comm, stream)
		err = nc.call("ncclReduce", nc.reduce, in.Ptr, out.Ptr, uintptr(count), dtype, redOp, uintptr(root), cm, c.stream)
	case "Broadcast": // ncclBroadcast(send, recv, count, datatype, root, comm, stream)
		err = nc.call("ncclBroadcast", nc.broadcast, in.Ptr, out.Ptr, uintptr(count), dtype, uintptr(root), cm, c.stream)
	}
	if err != nil {
		return c.failLocked(fmt.Errorf("%s: %w", what, err))
	}
	ev, err := c.event()
	if err != nil {
		return c.failLocked(err)
	}
	if err := d.drv.call("cuEventRecord(done)", d.drv.cuEventRecord, ev, c.stream); err != nil {
		c.events = append(c.events, ev)
		return c.failLocked(err)
	}
	c.issued++
	c.pending = append(c.pending, pendingColl{seq: c.issued, ev: ev, what: what, since: time.Now()})
	return nil
}

// event is a done event from the pool, or a new one (under mu, the context current).
func (c *RankComm) event() (uintptr, error) {
	if n := len(c.events); n > 0 {
		ev := c.events[n-1]
		c.events = c.events[:n-1]
		return ev, nil
	}
	var ev uintptr
	err := c.d.drv.call("cuEventCreate", c.d.drv.cuEventCreate, uintptr(unsafe.Pointer(&ev)), eventDisableTiming)
	return ev, err
}

// Wait makes the compute stream wait for every collective queued so far; the host does not wait.
func (c *RankComm) Wait() error { return c.WaitFor(c.Mark()) }

// Mark is a ticket for the collectives queued so far.
func (c *RankComm) Mark() dist.Ticket {
	c.mu.Lock()
	defer c.mu.Unlock()
	return dist.Ticket(c.issued)
}

// WaitFor makes the compute stream wait for the collectives queued before t (the done event of
// the last of them, which orders every earlier one: one communication stream); a collective the
// watchdog has seen done needs no wait. The host does not wait.
func (c *RankComm) WaitFor(t dist.Ticket) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.errLocked("Wait"); err != nil {
		return err
	}
	n := uint64(t)
	if n > c.issued {
		return fmt.Errorf("nccl: rank %d: WaitFor(ticket %d): only %d collectives were queued", c.rank, n, c.issued)
	}
	if n <= c.waited {
		return nil
	}
	var ev uintptr // the newest pending collective before t; none: all done
	for i := len(c.pending) - 1; i >= 0; i-- {
		if c.pending[i].seq <= n {
			ev = c.pending[i].ev
			break
		}
	}
	if ev != 0 {
		d := c.d
		ok := d.enterW()
		defer d.leave()
		if !ok {
			return fmt.Errorf("nccl: rank %d: Wait: GPU %d has failed earlier: %w", c.rank, d.Ordinal, d.err)
		}
		// The wait takes the event's state now: the watchdog may recycle it afterwards.
		if err := d.drv.call("cuStreamWaitEvent(compute after communication)", d.drv.cuStreamWaitEvent, d.stream, ev, 0); err != nil {
			return c.failLocked(err)
		}
	}
	c.waited = n
	return nil
}

// failLocked records err as the communicator's final error (the first one wins), aborts NCCL and
// returns the recorded error (under mu).
func (c *RankComm) failLocked(err error) error {
	if c.failed == nil {
		c.failed = fmt.Errorf("nccl: rank %d of %d (GPU %d): %w", c.rank, c.size, c.d.Ordinal, err)
		c.abortNCCL()
	}
	return c.failed
}

// abortNCCL aborts the NCCL communicator once (ncclCommAbort ends its kernels in flight).
func (c *RankComm) abortNCCL() {
	if cm := c.comm.Swap(0); cm != 0 {
		runtime.LockOSThread()
		purego.SyscallN(c.d.drv.cuCtxSetCurrent, c.d.ctx)
		c.nc.call("ncclCommAbort", c.nc.commAbort, cm)
		runtime.UnlockOSThread()
	}
}

// Abort ends the communicator with err (a rank of this process failed, or a peer process died):
// NCCL is aborted, so a rank blocked on it wakes up, and every later call returns the error.
func (c *RankComm) Abort(err error) {
	if err == nil {
		err = errors.New("aborted")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failLocked(err)
}

// Err is the communicator's final error, nil while it works.
func (c *RankComm) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed
}

// watch is the watchdog: every Poll it retires the collectives that are done and aborts on an
// asynchronous NCCL error, a dead peer (Alive) or a collective older than Timeout.
func (c *RankComm) watch() {
	defer close(c.done)
	t := time.NewTicker(c.o.Poll)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if err := c.check(); err != nil {
			c.mu.Lock()
			c.failLocked(err)
			c.mu.Unlock()
			return
		}
	}
}

// check is one round of the watchdog: nil while all is well.
func (c *RankComm) check() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	d := c.d
	if r, _, _ := purego.SyscallN(d.drv.cuCtxSetCurrent, d.ctx); r&0xffffffff != 0 {
		return d.drv.check("cuCtxSetCurrent", r&0xffffffff)
	}
	if cm := c.comm.Load(); cm != 0 {
		var r int32
		if err := c.nc.call("ncclCommGetAsyncError", c.nc.commGetAsyncError, cm, uintptr(unsafe.Pointer(&r))); err != nil {
			return err
		}
		if r != 0 && r != ncclInProgress {
			return fmt.Errorf("NCCL reports an asynchronous error: %w", c.nc.check("ncclCommGetAsyncError", uintptr(r)))
		}
	}
	if c.o.Alive != nil {
		if err := c.o.Alive(); err != nil {
			return err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.pending) > 0 {
		p := c.pending[0]
		r, _, _ := purego.SyscallN(d.drv.cuEventQuery, p.ev)
		switch r &= 0xffffffff; r {
		case 0:
			c.pending = c.pending[1:]
			c.events = append(c.events, p.ev)
			continue
		case cuErrNotReady:
			if age := time.Since(p.since); age > c.o.Timeout {
				age = age.Truncate(time.Millisecond)
				return fmt.Errorf("%s not done after %s (timeout %s): a rank that does not take part, or a dead link", p.what, age, c.o.Timeout)
			}
		default:
			return fmt.Errorf("%s: %w", p.what, d.drv.check("cuEventQuery", r))
		}
		break
	}
	return nil
}

// Close waits for the collectives in flight (the watchdog still guards the wait) and destroys the
// communicator, its stream and events. After a failure it only releases what is left.
func (c *RankComm) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	failed := c.failed
	c.mu.Unlock()
	var err error
	if failed == nil {
		runtime.LockOSThread()
		purego.SyscallN(c.d.drv.cuCtxSetCurrent, c.d.ctx)
		if e := c.d.drv.call("cuStreamSynchronize(communication stream)", c.d.drv.cuStreamSynchronize, c.stream); e != nil {
			err = e
		}
		runtime.UnlockOSThread()
	}
	c.shut(false)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && failed == nil && c.failed != nil { // the watchdog aborted during the wait
		err = c.failed
	}
	return err
}

// shut stops the watchdog and releases the communicator (destroyed, or aborted when abort or after
// a failure), the stream and the events.
func (c *RankComm) shut(abort bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	if c.watching {
		select {
		case <-c.done:
		case <-time.After(c.o.Poll + time.Second):
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	d := c.d
	purego.SyscallN(d.drv.cuCtxSetCurrent, d.ctx)
	if cm := c.comm.Swap(0); cm != 0 {
		if abort {
			c.nc.call("ncclCommAbort", c.nc.commAbort, cm)
		} else {
			c.nc.call("ncclCommDestroy", c.nc.commDestroy, cm)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	evs := slices.Clone(c.events)
	for _, p := range c.pending {
		evs = append(evs, p.ev)
	}
	if c.compute != 0 {
		evs = append(evs, c.compute)
	}

	for _, ev := range evs {
		if d.drv.cuEventDestroy != 0 {
			purego.SyscallN(d.drv.cuEventDestroy, ev)
		}
	}
	c.events, c.pending, c.compute = nil, nil, 0
	if c.stream != 0 && d.drv.cuStreamDestroy != 0 {
		purego.SyscallN(d.drv.cuStreamDestroy, c.stream)
	}
	c.stream = 0
}
