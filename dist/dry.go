package dist

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
)

// Dry returns rank's handle of a communicator of size ranks that moves nothing: every collective
// checks its arguments and returns. It lets one rank's trainer run alone on models.DryDevice, so
// the memory a rank of an N-rank job holds is counted without the other N−1 (bench train --dry
// --world N).
func Dry(rank, size int) Comm {
	if size < 1 || rank < 0 || rank >= size {
		panic(fmt.Sprintf("dist: Dry(%d, %d): rank outside [0, size)", rank, size))
	}
	return dryComm{rank, size}
}

type dryComm struct{ rank, size int }

func (c dryComm) Rank() int { return c.rank }
func (c dryComm) Size() int { return c.size }

func (c dryComm) AllReduce(t *kernels.Tensor, op Op) error { return nil }

func (c dryComm) ReduceScatter(out, in *kernels.Tensor, op Op) error {
	if in.Numel() != c.size*out.Numel() {
		return fmt.Errorf("dist: ReduceScatter on rank %d: in has %d elements, want Size()·len(out) = %d·%d", c.rank, in.Numel(), c.size, out.Numel())
	}
	return nil
}

func (c dryComm) AllGather(out, in *kernels.Tensor) error {
	if out.Numel() != c.size*in.Numel() {
		return fmt.Errorf("dist: AllGather on rank %d: out has %d elements, want Size()·len(in) = %d·%d", c.rank, out.Numel(), c.size, in.Numel())
	}
	return nil
}

func (c dryComm) Broadcast(t *kernels.Tensor, root int) error { return nil }
func (c dryComm) Reduce(t *kernels.Tensor, op Op, root int) error {
	if root < 0 || root >= c.size {
		return fmt.Errorf("dist: Reduce on rank %d: root %d outside [0, %d)", c.rank, root, c.size)
	}
	return nil
}
func (c dryComm) Wait() error          { return nil }
func (c dryComm) Mark() Ticket         { return 0 }
func (c dryComm) WaitFor(Ticket) error { return nil }
func (c dryComm) Close() error         { return nil }
