package trainer

// Launch: the ranks this process drives, from a device list and the launcher's environment
// (docs/multi-gpu.md). One process per node drives its GPUs, one goroutine and one CUDA stream
// (plus a communication stream) per GPU, through per-rank NCCL communicators; a job over several
// nodes runs the same command on each, meets at a TCP rendezvous on process 0 (dist/rendezvous.go)
// that hands out NCCL's unique id, and keeps those connections as a liveness channel. cpu:N runs N
// CPU ranks in this process through dist.Local (tests, CPU runs).

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
)

// LaunchOptions say which ranks this process drives.
type LaunchOptions struct {
	Devices string // a device list (dist.ParseDevices): --devices, or the job's device:
	// Ranked runs even a single device through a communicator (--devices was given); otherwise a
	// single device (cpu, cuda, cuda:N) is a plain single-rank run, as before.
	Ranked   bool
	Launcher string        // --launcher: auto | none | torchrun | slurm | mpi
	Timeout  time.Duration // the rendezvous's (0: 5 minutes)
	Env      dist.Getenv   // nil: the process environment
	Job      *config.Job   // its hash must agree between processes
	Log      io.Writer     // the launch's lines (nil: none)
	// Grace is how long a process waits, after another process was lost and its communicators
	// were aborted, for its ranks to return before Exit (default 30 s).
	Grace time.Duration
	// Exit ends the process after the grace (default: print the error, exit status 1).
	Exit func(error)
}

// Ranks are this process's ranks: their devices and communicators.
type Ranks struct {
	Devs  []kernels.Device
	Comms []dist.Comm // nil: a single plain device, no communicator
	Sess  *dist.Session
	World int // ranks in all processes
	First int // global rank of Devs[0]
	Proc  dist.Process

	mu   sync.Mutex
	nccl []*cuda.RankComm
}

// Lead reports whether this process holds global rank 0 (which logs, checkpoints, validates).
func (r *Ranks) Lead() bool { return r.First == 0 }

// String says what runs where: "2 GPUs (cuda:0, cuda:1), ranks 0-1 of 2".
func (r *Ranks) String() string {
	var names []string
	for _, d := range r.Devs {
		if g, ok := d.(*cuda.Device); ok {
			names = append(names, fmt.Sprintf("cuda:%d", g.Ordinal))
		} else {
			names = append(names, d.Name())
		}
	}
	s := fmt.Sprintf("%d rank(s) here (%s)", len(r.Devs), strings.Join(names, ", "))
	if r.Comms == nil {
		return s + ", no communicator"
	}
	s += fmt.Sprintf(", global ranks %d-%d of %d", r.First, r.First+len(r.Devs)-1, r.World)
	if r.Proc.Size > 1 {
		s += fmt.Sprintf(", process %d of %d (%s, rendezvous %s)", r.Proc.Rank, r.Proc.Size, r.Proc.Launcher, r.Proc.Addr)
	}
	return s
}

// JobHash is the hash the rendezvous compares: the resolved job without its device list (nodes
// may have different GPUs).
func JobHash(job *config.Job) (string, error) {
	j := *job
	j.Device = ""
	b, err := j.YAML()
	if err != nil {
		return "", err
	}
	return dist.JobHash(b), nil
}

// OpenRanks opens the devices of o.Devices that this process drives and their communicators: CPU
// ranks through dist.Local; GPUs through NCCL (one communicator of this process's GPUs, or, under
// a launcher with several processes, the rendezvous first and then this process's ranks of the
// job's communicator). A GPU the node does not have is an error naming it.
func OpenRanks(o LaunchOptions) (*Ranks, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	if o.Exit == nil {
		o.Exit = func(err error) {
			fmt.Fprintf(os.Stderr, "fewstep: %v: exiting\n", err)
			os.Exit(1)
		}
	}
	spec, err := dist.ParseDevices(o.Devices)
	if err != nil {
		return nil, err
	}
	proc, err := dist.ProcessFromEnv(o.Launcher, o.Env)
	if err != nil {
		return nil, err
	}
	r := &Ranks{Proc: proc}
	single := !spec.All && spec.Ranks() == 1
	if single && !o.Ranked && proc.Size == 1 { // a plain single-device run
		var dev kernels.Device = kernels.CPU()
		if !spec.CPU {
			g, err := openGPU(spec, spec.Ordinals[0])
			if err != nil {
				return nil, err
			}
			dev = g
		}
		r.Devs, r.World = []kernels.Device{dev}, 1
		return r, nil
	}
	if spec.CPU {
		if proc.Size > 1 {
			return nil, fmt.Errorf("devices %q: CPU ranks run in one process, but the %s environment says %d processes (use --launcher none, or GPUs)", spec.Text, proc.Launcher, proc.Size)
		}
		threads := max(1, runtime.GOMAXPROCS(0)/spec.N)
		for i := 0; i < spec.N; i++ {
			r.Devs = append(r.Devs, kernels.NewCPU(threads))
		}
		r.Comms, r.World = dist.Local(spec.N), spec.N
		return r, nil
	}
	ords, err := GPUOrdinals(spec)
	if err != nil {
		return nil, err
	}
	if ords, err = dist.Share(ords, proc.LocalRank, proc.LocalSize); err != nil {
		return nil, fmt.Errorf("devices %q: %w", spec.Text, err)
	}
	devs := make([]*cuda.Device, len(ords))
	for i, g := range ords {
		if devs[i], err = openGPU(spec, g); err != nil {
			return nil, err
		}
		r.Devs = append(r.Devs, devs[i])
	}
	if proc.Size == 1 {
		rcs, err := cuda.NewLocalRanks(devs, cuda.RankOptions{})
		if err != nil {
			return nil, fmt.Errorf("devices %q: %w", spec.Text, err)
		}
		r.setNCCL(rcs)
		r.World = len(rcs)
		return r, nil
	}
	hash, err := JobHash(o.Job)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Log, "launch: process %d of %d (%s), %d GPU(s) %v; rendezvous at %s\n", proc.Rank, proc.Size, proc.Launcher, len(devs), ords, proc.Addr)
	sess, err := dist.Join(dist.Rendezvous{Addr: proc.Addr, Rank: proc.Rank, Size: proc.Size, Job: hash, GPUs: len(devs),
		Timeout: o.Timeout, ID: cuda.NCCLUniqueID})
	if err != nil {
		return nil, err
	}
	r.Sess, r.First, r.World = sess, sess.First, sess.Ranks
	// From here a lost process aborts this one's communicators and, past the grace, ends it.
	sess.Watch(r.Abort, o.Grace, o.Exit)
	rcs, err := cuda.NewRanks(devs, sess.ID, sess.Ranks, sess.First, cuda.RankOptions{Alive: sess.Alive})
	if err != nil {
		err = fmt.Errorf("process %d: NCCL ranks %d-%d of %d: %w", proc.Rank, sess.First, sess.First+len(devs)-1, sess.Ranks, err)
		sess.Fail(err)
		return nil, err
	}
	r.setNCCL(rcs)
	return r, nil
}

// GPUOrdinals resolves a device list (dist.ParseDevices) to the ordinals of this machine's GPUs:
// it counts them (without a driver the error says why) and checks that every GPU named exists.
// Errors start with the list: devices "cuda:0,7": GPU 7 does not exist: ...
func GPUOrdinals(spec dist.Devices) ([]int, error) {
	if spec.CPU {
		return spec.Resolve(0) // CPU ranks have no GPUs
	}
	count, err := cuda.DeviceCount()
	if err != nil {
		return nil, fmt.Errorf("devices %q: %w", spec.Text, err)
	}
	return spec.Resolve(count)
}

func openGPU(spec dist.Devices, ord int) (*cuda.Device, error) {
	g, err := cuda.New(ord)
	if err != nil {
		return nil, fmt.Errorf("devices %q: GPU %d: %w", spec.Text, ord, err)
	}
	UseGPUDefaults(g) // a GPU trains with bf16 GEMMs, fp32 master weights and states
	return g, nil
}

func (r *Ranks) setNCCL(rcs []*cuda.RankComm) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nccl = rcs
	r.Comms = make([]dist.Comm, len(rcs))
	for i, c := range rcs {
		r.Comms[i] = c
	}
}

// Abort aborts this process's NCCL communicators with err: ranks blocked in a collective, or in
// a device synchronization behind one, wake up, and their next collective returns err.
func (r *Ranks) Abort(err error) {
	r.mu.Lock()
	rcs := r.nccl
	r.mu.Unlock()
	for _, c := range rcs {
		c.Abort(err)
	}
}

// Run runs f for every rank of this process, each in its own goroutine with its device and
// communicator, and returns the first error. A rank that fails aborts the communicators of this
// process and tells the other processes, so no rank waits for it in a collective.
func (r *Ranks) Run(f func(i int, dev kernels.Device, c dist.Comm) error) error {
	if r.Comms == nil {
		return f(0, r.Devs[0], nil)
	}
	return dist.Run(r.Comms, func(i int, c dist.Comm) error {
		err := f(i, r.Devs[i], c)
		if err != nil {
			e := fmt.Errorf("rank %d failed: %w", c.Rank(), err)
			r.Abort(e)
			if r.Sess != nil {
				r.Sess.Fail(e)
			}
		}
		return err
	})
}

// Close ends the session (a goodbye to the other processes). The communicators are closed by Run.
func (r *Ranks) Close() error {
	if r.Sess != nil {
		return r.Sess.Close()
	}
	return nil
}
