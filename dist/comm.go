// Package dist is fewstep's distributed layer: the communicator the trainer averages gradients and
// shards weights through, the in-process communicator (ranks as goroutines, for tests and CPU
// runs), and the launch side (the ranks of a job from torchrun's, Slurm's or an MPI launcher's
// environment, and the TCP rendezvous that hands NCCL's unique id to every rank).
//
// One rank drives one device. A job on N ranks runs N trainers, each with its own Device and its
// own Comm handle (Rank() differs, Size() is N); every rank calls the same collectives in the same
// order with tensors of the same shape and dtype.
package dist

import (
	"github.com/fewstep/fewstep/kernels"
)

// Op is a reduction.
type Op int

const (
	Sum  Op = iota
	Mean    // Sum divided by Size()
)

// Ticket names a point in one rank's sequence of collectives (Comm.Mark): the collectives called
// before it.
type Ticket uint64

// Comm is one rank's handle on a communicator. Collectives are enqueued on the rank's device in
// the order they are called: on a GPU they run on the communicator's stream after the compute
// queued so far and may return before they finish (Wait orders the compute after them); on the CPU
// they are done when they return. The tensors are the rank's own, on its device; their dtype is
// F32 or BF16 and the same on every rank.
//
// An error from a collective is final for the communicator: a rank that died, a timeout, a
// mismatch. The error names the collective, the rank and what went wrong; the caller gives up.
type Comm interface {
	Rank() int
	Size() int

	// AllReduce replaces t on every rank by the reduction of all ranks' t, in place.
	AllReduce(t *kernels.Tensor, op Op) error
	// ReduceScatter reduces in ([Size()·k] on every rank) and leaves rank r's slice
	// [r·k, (r+1)·k) of the result in out ([k]).
	ReduceScatter(out, in *kernels.Tensor, op Op) error
	// AllGather concatenates every rank's in ([k]) into out ([Size()·k]), rank order.
	AllGather(out, in *kernels.Tensor) error
	// Reduce replaces root's t by the reduction of all ranks' t, in place; the other ranks' t are
	// only read (left as they were).
	Reduce(t *kernels.Tensor, op Op, root int) error
	// Broadcast copies root's t into every rank's t, in place.
	Broadcast(t *kernels.Tensor, root int) error
	// Wait makes the rank's device wait (device-side, not the host) for every collective called so
	// far; the host waits only at the device's Sync. It returns an error already known to the
	// communicator (a failed rank), if any. Wait() is WaitFor(Mark()).
	Wait() error
	// Mark is a ticket for the collectives called so far on this handle.
	Mark() Ticket
	// WaitFor is Wait for the collectives called before t was marked only: those called later may
	// still be in flight (a gradient bucket's all-reduce while the next block's weights are waited
	// for, models/fsdp.go). Tickets of one handle are ordered: waiting for t waits for every
	// earlier ticket too.
	WaitFor(t Ticket) error
	// Close releases the communicator; collectives after it are errors.
	Close() error
}
