package dist

// The in-process communicator: N ranks as goroutines of one process, on the CPU device (tensors with
// host storage, kernels.Tensor.F32). Every collective is a rendezvous of all N ranks: the last rank
// to arrive computes the result for everyone and releases them. Reductions add the ranks' values in
// rank order (((t₀ + t₁) + t₂) + …, fp32), so every rank gets bit-identical results and a run is
// deterministic. A rank that stops calling does not hang the others: a collective not completed
// within the timeout, or one that a closed rank can no longer join, fails on every rank with an
// error naming the collective and the missing ranks, and the communicator stays failed.

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

// DefaultLocalTimeout is how long a rank of Local waits in a collective for the others: long
// enough for rank 0's validation between two steps (a rank that fails or returns closes its handle
// and releases the others at once; the timeout is for a rank that hangs).
const DefaultLocalTimeout = 30 * time.Minute

// Local returns the N ranks' handles of a new in-process communicator (DefaultLocalTimeout).
func Local(n int) []Comm { return LocalTimeout(n, DefaultLocalTimeout) }

// LocalTimeout is Local with the time a rank waits in a collective for the others.
func LocalTimeout(n int, timeout time.Duration) []Comm {
	if n < 1 {
		panic(fmt.Sprintf("dist: Local(%d): need at least one rank", n))
	}
	g := &localGroup{n: n, timeout: timeout, rounds: map[int]*round{}, seq: make([]int, n),
		closed: make([]bool, n), abort: make(chan struct{})}
	cs := make([]Comm, n)
	for r := range cs {
		cs[r] = &localComm{g: g, rank: r}
	}
	return cs
}

type localGroup struct {
	n       int
	timeout time.Duration

	mu     sync.Mutex
	rounds map[int]*round // by sequence number, while not all ranks have left
	seq    []int          // collectives called so far, per rank
	closed []bool
	err    error         // sticky: the first failure
	abort  chan struct{} // closed with err
}

// round is one collective: every rank's arguments, then the result written by the last to arrive.
type round struct {
	seq     int
	kind    string
	op      Op
	root    int
	n       int         // elements of the rank's input
	ins     [][]float32 // per rank
	outs    [][]float32 // per rank (AllReduce/Broadcast: in place)
	arrived int
	here    []bool
	done    chan struct{}
}

type localComm struct {
	g    *localGroup
	rank int
}

func (c *localComm) Rank() int { return c.rank }
func (c *localComm) Size() int { return c.g.n }

func host(t *kernels.Tensor, what string) ([]float32, error) {
	if t == nil {
		return nil, fmt.Errorf("%s: nil tensor", what)
	}
	if t.F32 == nil { // any dtype: the CPU device holds every tensor as float32 (a bf16 one is a label)
		return nil, fmt.Errorf("%s: %v: the in-process communicator needs tensors with host storage (the CPU device)", what, t)
	}
	return t.F32, nil
}

func (c *localComm) AllReduce(t *kernels.Tensor, op Op) error {
	b, err := host(t, "AllReduce")
	if err != nil {
		return err
	}
	return c.g.call(c.rank, "AllReduce", op, 0, b, b)
}

func (c *localComm) ReduceScatter(out, in *kernels.Tensor, op Op) error {
	o, err := host(out, "ReduceScatter out")
	if err != nil {
		return err
	}
	i, err := host(in, "ReduceScatter in")
	if err != nil {
		return err
	}
	if len(i) != c.g.n*len(o) {
		return fmt.Errorf("dist: ReduceScatter on rank %d: in has %d elements, want Size()·len(out) = %d·%d", c.rank, len(i), c.g.n, len(o))
	}
	return c.g.call(c.rank, "ReduceScatter", op, 0, i, o)
}

func (c *localComm) AllGather(out, in *kernels.Tensor) error {
	o, err := host(out, "AllGather out")
	if err != nil {
		return err
	}
	i, err := host(in, "AllGather in")
	if err != nil {
		return err
	}
	if len(o) != c.g.n*len(i) {
		return fmt.Errorf("dist: AllGather on rank %d: out has %d elements, want Size()·len(in) = %d·%d", c.rank, len(o), c.g.n, len(i))
	}
	return c.g.call(c.rank, "AllGather", Sum, 0, i, o)
}

func (c *localComm) Broadcast(t *kernels.Tensor, root int) error {
	b, err := host(t, "Broadcast")
	if err != nil {
		return err
	}
	if root < 0 || root >= c.g.n {
		return fmt.Errorf("dist: Broadcast on rank %d: root %d outside [0, %d)", c.rank, root, c.g.n)
	}
	return c.g.call(c.rank, "Broadcast", Sum, root, b, b)
}

func (c *localComm) Reduce(t *kernels.Tensor, op Op, root int) error {
	b, err := host(t, "Reduce")
	if err != nil {
		return err
	}
	if root < 0 || root >= c.g.n {
		return fmt.Errorf("dist: Reduce on rank %d: root %d outside [0, %d)", c.rank, root, c.g.n)
	}
	return c.g.call(c.rank, "Reduce", op, root, b, b)
}

// Wait: collectives are done when they return on the CPU; it reports a failure already known.
func (c *localComm) Wait() error {
	c.g.mu.Lock()
	defer c.g.mu.Unlock()
	return c.g.err
}

// Mark: every collective called so far is done; the ticket is their count.
func (c *localComm) Mark() Ticket {
	c.g.mu.Lock()
	defer c.g.mu.Unlock()
	return Ticket(c.g.seq[c.rank])
}

// WaitFor is Wait: the collectives before t are done.
func (c *localComm) WaitFor(t Ticket) error { return c.Wait() }

// Close leaves the communicator. Collectives the other ranks call afterwards (which this rank can
// no longer join) fail at once, naming this rank.
func (c *localComm) Close() error {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed[c.rank] {
		return nil
	}
	g.closed[c.rank] = true
	for _, r := range g.rounds {
		if !r.here[c.rank] {
			g.fail(fmt.Errorf("dist: %s #%d: rank %d closed the communicator without joining it (missing: %s)", r.kind, r.seq, c.rank, missing(r)))
			break
		}
	}
	return nil
}

// fail records the first failure and releases every waiting rank (mu held).
func (g *localGroup) fail(err error) {
	if g.err == nil {
		g.err = err
		close(g.abort)
	}
}

func missing(r *round) string {
	var m []string
	for i, h := range r.here {
		if !h {
			m = append(m, fmt.Sprint(i))
		}
	}
	return "rank " + strings.Join(m, ", ")
}

// call joins rank's next collective with its input and output buffers and waits for it to complete.
func (g *localGroup) call(rank int, kind string, op Op, root int, in, out []float32) error {
	g.mu.Lock()
	if g.err != nil {
		err := g.err
		g.mu.Unlock()
		return fmt.Errorf("%s on rank %d: communicator failed earlier: %w", kind, rank, err)
	}
	if g.closed[rank] {
		g.mu.Unlock()
		return fmt.Errorf("dist: %s on rank %d after Close", kind, rank)
	}
	seq := g.seq[rank]
	g.seq[rank]++
	r := g.rounds[seq]
	if r == nil {
		r = &round{seq: seq, kind: kind, op: op, root: root, n: len(in), ins: make([][]float32, g.n),
			outs: make([][]float32, g.n), here: make([]bool, g.n), done: make(chan struct{})}
		g.rounds[seq] = r
		for i, cl := range g.closed {
			if cl {
				g.fail(fmt.Errorf("dist: %s #%d: rank %d closed the communicator (missing: %s)", kind, seq, i, missing(r)))
				err := g.err
				g.mu.Unlock()
				return err
			}
		}
	}
	if r.kind != kind || r.op != op || r.root != root || r.n != len(in) {
		g.fail(fmt.Errorf("dist: collective #%d: rank %d called %s(%d elements, op %d, root %d), another rank %s(%d elements, op %d, root %d)",
			seq, rank, kind, len(in), op, root, r.kind, r.n, r.op, r.root))
		err := g.err
		g.mu.Unlock()
		return err
	}
	r.ins[rank], r.outs[rank], r.here[rank] = in, out, true
	r.arrived++
	if r.arrived == g.n {
		r.compute()
		delete(g.rounds, seq)
		close(r.done)
		g.mu.Unlock()
		return nil
	}
	g.mu.Unlock()

	timer := time.NewTimer(g.timeout)
	defer timer.Stop()
	select {
	case <-r.done:
		return nil
	case <-g.abort:
	case <-timer.C:
		g.mu.Lock()
		select {
		case <-r.done: // completed at the same moment
			g.mu.Unlock()
			return nil
		default:
		}
		g.fail(fmt.Errorf("dist: %s #%d: %s did not arrive within %v (rank %d waited)", kind, seq, missing(r), g.timeout, rank))
		g.mu.Unlock()
	}
	select {
	case <-r.done: // completed before the failure: the result is valid
		return nil
	default:
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return fmt.Errorf("%s on rank %d: %w", kind, rank, g.err)
}

// compute writes the collective's result into every rank's output, reducing in rank order. Inputs
// may alias outputs (in-place AllReduce, and rank r's slice of out as in, as NCCL allows), so the
// result is made from copies first.
func (r *round) compute() {
	N := len(r.ins)
	switch r.kind {
	case "AllReduce", "ReduceScatter", "Reduce":
		acc := append([]float32(nil), r.ins[0]...)
		for q := 1; q < N; q++ {
			for i, v := range r.ins[q] {
				acc[i] += v
			}
		}
		if r.op == Mean {
			inv := float32(N)
			for i := range acc {
				acc[i] /= inv
			}
		}
		switch r.kind {
		case "AllReduce":
			for q := 0; q < N; q++ {
				copy(r.outs[q], acc)
			}
			return
		case "Reduce":
			copy(r.outs[r.root], acc)
			return
		}
		k := len(acc) / N
		for q := 0; q < N; q++ {
			copy(r.outs[q], acc[q*k:(q+1)*k])
		}
	case "AllGather":
		k := r.n
		all := make([]float32, 0, N*k)
		for q := 0; q < N; q++ {
			all = append(all, r.ins[q]...)
		}
		for q := 0; q < N; q++ {
			copy(r.outs[q], all)
		}
	case "Broadcast":
		src := append([]float32(nil), r.ins[r.root]...)
		for q := 0; q < N; q++ {
			copy(r.outs[q], src)
		}
	default:
		panic("dist: unknown collective " + r.kind)
	}
}

// Run runs f(rank, comm) for every rank of comms, each in its own goroutine, and returns the first
// error (by time) of any rank, prefixed with the rank. A rank that returns an error closes its
// handle, so the others fail in their next collective instead of waiting; every rank's handle is
// closed when its f returns.
func Run(comms []Comm, f func(rank int, c Comm) error) error {
	errs := make([]error, len(comms))
	order := make(chan int, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func(r int, c Comm) {
			defer wg.Done()
			defer func() {
				if p := recover(); p != nil {
					errs[r] = fmt.Errorf("panic: %v", p)
				}
				c.Close()
				if errs[r] != nil {
					order <- r
				}
			}()
			errs[r] = f(r, c)
		}(r, c)
	}
	wg.Wait()
	close(order)
	first := -1
	for r := range order {
		if first < 0 {
			first = r
		}
	}
	if first < 0 {
		return nil
	}
	// Prefer a rank's own failure over the others' "communicator failed" echoes of it.
	var own []int
	for r, e := range errs {
		if e != nil && !strings.Contains(e.Error(), "communicator failed earlier") && !strings.Contains(e.Error(), "closed the communicator") {
			own = append(own, r)
		}
	}
	if len(own) > 0 && errs[first] != nil && (strings.Contains(errs[first].Error(), "communicator failed earlier") || strings.Contains(errs[first].Error(), "closed the communicator")) {
		sort.Ints(own)
		first = own[0]
	}
	return fmt.Errorf("rank %d of %d: %w", first, len(comms), errs[first])
}
