package cuda

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
)

// fakeRanks is the stand-in NCCL of fakeNCCL with its driver stand-ins, and two stand-in devices
// (GPUs 3 and 5, contexts 0x9003 and 0x9005, compute streams 0x5003 and 0x5005).
type fakeRanks struct {
	nc   *ncclLib
	devs []*Device
	set  func(async, query int)
	// log returns the calls since the last log: collectives {kind 1-4, send, recv, count, dtype,
	// op/root, comm, stream}, event records {10, event, stream}, stream waits {11, stream, event}.
	log   func() [][8]uint64
	state func() (aborted, evDestroyed, streamDestroyed int, inits [][4]uint64, ids [][]byte)
}

func newFakeRanks(t *testing.T) *fakeRanks {
	nc := buildFakeNCCL(t)
	sym := func(name string) uintptr {
		p, err := purego.Dlsym(nc.lib, name)
		if err != nil || p == 0 {
			t.Fatalf("fake NCCL lacks %s", name)
		}
		return p
	}
	dv := &drv{cuCtxSetCurrent: sym("fake_cuCtxSetCurrent"), cuStreamSynchronize: sym("fake_ok"),
		cuStreamCreate: sym("fake_cuStreamCreate"), cuStreamDestroy: sym("fake_cuStreamDestroy"),
		cuEventCreate: sym("fake_cuEventCreate"), cuEventDestroy: sym("fake_cuEventDestroy"),
		cuEventRecord: sym("fake_cuEventRecord"), cuStreamWaitEvent: sym("fake_cuStreamWaitEvent"),
		cuEventQuery: sym("fake_cuEventQuery")}
	f := &fakeRanks{nc: nc, devs: []*Device{
		{drv: dv, Ordinal: 3, ctx: 0x9003, stream: 0x5003},
		{drv: dv, Ordinal: 5, ctx: 0x9005, stream: 0x5005},
	}}
	setFn, stateFn, state2Fn := sym("fake_set"), sym("fake_state"), sym("fake_state2")
	f.set = func(async, query int) { purego.SyscallN(setFn, uintptr(async), uintptr(query)) }
	f.log = func() (recs [][8]uint64) {
		var out [3 + 16*8]uint64
		purego.SyscallN(stateFn, uintptr(unsafe.Pointer(&out[0])))
		for i := 0; i < int(out[2]); i++ {
			recs = append(recs, [8]uint64(out[3+8*i:3+8*i+8]))
		}
		return recs
	}
	f.state = func() (int, int, int, [][4]uint64, [][]byte) {
		var out [4 + 32 + 8*128/8]uint64
		purego.SyscallN(state2Fn, uintptr(unsafe.Pointer(&out[0])))
		var inits [][4]uint64
		var ids [][]byte
		ib := unsafe.Slice((*byte)(unsafe.Pointer(&out[4+32])), 8*128)
		for i := 0; i < int(out[3]); i++ {
			inits = append(inits, [4]uint64(out[4+4*i:4+4*i+4]))
			ids = append(ids, slices.Clone(ib[128*i:128*(i+1)]))
		}
		return int(out[0]), int(out[1]), int(out[2]), inits, ids
	}
	f.set(0, 0)
	f.log()
	f.state()
	return f
}

// TestNCCLRankFakePlumbing: the per-rank communicator's NCCL and driver calls against the stand-in
// NCCL. ncclCommInitRank gets the id (128 bytes by value), the rank and the world size, inside one
// group, each with its GPU's context current; each collective waits on the compute stream with an
// event, runs on the communication stream with nccl.h's argument order and enums, and records a
// done event that Wait makes the compute stream wait for; bad tensors are refused before NCCL.
func TestNCCLRankFakePlumbing(t *testing.T) {
	f := newFakeRanks(t)
	id, err := f.nc.uniqueID()
	if err != nil {
		t.Fatal(err)
	}
	for i := range id {
		if id[i] != byte(3*i+1) {
			t.Fatalf("ncclGetUniqueId's id byte %d = %d, want %d", i, id[i], byte(3*i+1))
		}
	}
	id[0], id[127] = 0xAB, 0xCD // the id of "another process"
	rs, err := newRanks(f.nc, f.devs, id, 4, 2, RankOptions{Poll: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, r := range rs {
			r.Close()
		}
	}()
	_, _, _, inits, ids := f.state()
	// {nranks, rank, group depth, current context}
	if want := [][4]uint64{{4, 2, 1, 0x9003}, {4, 3, 1, 0x9005}}; !slices.Equal(inits, want) {
		t.Fatalf("ncclCommInitRank got %#x, want %#x", inits, want)
	}
	for i, got := range ids {
		if !slices.Equal(got, id) {
			t.Fatalf("ncclCommInitRank of rank %d got id %x…, want %x…", i+2, got[:8], id[:8])
		}
	}
	if rs[0].Rank() != 2 || rs[1].Rank() != 3 || rs[0].Size() != 4 || rs[0].comm.Load() != 0x2002 || rs[1].comm.Load() != 0x2003 {
		t.Fatalf("ranks %d, %d of %d, comms %#x %#x; want 2, 3 of 4, 0x2002 0x2003", rs[0].Rank(), rs[1].Rank(), rs[0].Size(), rs[0].comm.Load(), rs[1].comm.Load())
	}
	r := rs[0]
	f.set(0, 600) // not done: the watchdog keeps every event pending (the timeout is 10 minutes)
	ten := func(dt kernels.DType, n int, ptr uintptr) *kernels.Tensor {
		return &kernels.Tensor{Dev: r.d, DType: dt, Shape: []int{n}, Ptr: ptr}
	}
	cs, ce := uint64(r.stream), uint64(r.compute) // communication stream, compute event
	var dones []uint64
	var tickets []dist.Ticket
	for _, tc := range []struct {
		name string
		run  func() error
		call [8]uint64 // the collective; the done event and the stream are checked around it
	}{
		{"AllReduce sum fp32", func() error { return r.AllReduce(ten(kernels.F32, 6, 0xA000), dist.Sum) },
			[8]uint64{1, 0xA000, 0xA000, 6, 7, 0, 0x2002, cs}},
		{"AllReduce mean bf16", func() error { return r.AllReduce(ten(kernels.BF16, 1<<20+3, 0xA000), dist.Mean) },
			[8]uint64{1, 0xA000, 0xA000, 1<<20 + 3, 9, 4, 0x2002, cs}},
		{"ReduceScatter mean fp32", func() error {
			return r.ReduceScatter(ten(kernels.F32, 3, 0xB000), ten(kernels.F32, 12, 0xC000), dist.Mean)
		},
			[8]uint64{3, 0xC000, 0xB000, 3, 7, 4, 0x2002, cs}},
		{"AllGather bf16", func() error { return r.AllGather(ten(kernels.BF16, 20, 0xD000), ten(kernels.BF16, 5, 0xE000)) },
			[8]uint64{4, 0xE000, 0xD000, 5, 9, 0xffffffffffffffff, 0x2002, cs}},
		{"Broadcast fp16 from 3", func() error { return r.Broadcast(ten(kernels.F16, 1, 0xF000), 3) },
			[8]uint64{2, 0xF000, 0xF000, 1, 6, 3, 0x2002, cs}},
		{"Reduce mean fp32 to 1", func() error { return r.Reduce(ten(kernels.F32, 9, 0xF100), dist.Mean, 1) },
			[8]uint64{5, 0xF100, 0xF100, 9, 7, 4*256 + 1, 0x2002, cs}},
	} {
		if err := tc.run(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := f.log()
		if len(got) != 4 || got[0] != [8]uint64{10, ce, 0x5003} || got[1] != [8]uint64{11, cs, ce} || got[2] != tc.call ||
			got[3][0] != 10 || got[3][2] != cs || got[3][1] == ce {
			t.Fatalf("%s: calls %#x, want record(compute event %#x, compute stream 0x5003), wait(communication stream %#x, it), %#x, record(a done event, %#x)",
				tc.name, got, ce, cs, tc.call, cs)
		}
		if slices.Contains(dones, got[3][1]) {
			t.Fatalf("%s: done event %#x reused while its collective is pending (%#x)", tc.name, got[3][1], dones)
		}
		dones = append(dones, got[3][1])
		tickets = append(tickets, r.Mark())
	}
	// WaitFor: the compute stream waits for the done event of the ticket's last collective only.
	if err := r.WaitFor(tickets[1]); err != nil {
		t.Fatal(err)
	}
	if got := f.log(); len(got) != 1 || got[0] != [8]uint64{11, 0x5003, dones[1]} {
		t.Fatalf("WaitFor(the second collective's ticket): calls %#x, want the compute stream 0x5003 to wait for its done event %#x", got, dones[1])
	}
	if err := r.WaitFor(tickets[0]); err != nil || len(f.log()) != 0 {
		t.Fatalf("WaitFor of an earlier ticket, covered already: %v, calls made", err)
	}
	if err := r.WaitFor(tickets[len(tickets)-1] + 1); err == nil || !strings.Contains(err.Error(), "only 6 collectives were queued") {
		t.Fatalf("WaitFor of a ticket not marked yet: %v", err)
	}
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := f.log(); len(got) != 1 || got[0] != [8]uint64{11, 0x5003, dones[len(dones)-1]} {
		t.Fatalf("Wait: calls %#x, want the compute stream 0x5003 to wait for the last done event %#x", got, dones[len(dones)-1])
	}
	if err := r.Wait(); err != nil || len(f.log()) != 0 {
		t.Fatalf("a second Wait with nothing queued: %v, calls made", err)
	}
	// Done: the watchdog retires the events, and later collectives reuse them.
	f.set(0, 0)
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		n, pool := len(r.pending), len(r.events)
		r.mu.Unlock()
		if n == 0 && pool == len(dones) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the events are done: %d pending, %d in the pool; want 0, %d", n, pool, len(dones))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := r.AllReduce(ten(kernels.F32, 6, 0xA000), dist.Sum); err != nil {
		t.Fatal(err)
	}
	if got := f.log(); len(got) != 4 || !slices.Contains(dones, got[3][1]) {
		t.Fatalf("after the pool filled, the done event %#x is new (pool %#x)", got[3][1], dones)
	}
	// A collective the watchdog has seen done needs no wait.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		n := len(r.pending)
		r.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watchdog did not retire a done collective")
		}
	}
	if err := r.Wait(); err != nil || len(f.log()) != 0 {
		t.Fatalf("Wait for a collective already done: %v, calls made", err)
	}
	// Refused before NCCL: nothing reaches the log.
	other := &kernels.Tensor{Dev: rs[1].d, DType: kernels.F32, Shape: []int{6}, Ptr: 0xA000}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"ReduceScatter of the wrong size", r.ReduceScatter(ten(kernels.F32, 3, 0xB000), ten(kernels.F32, 11, 0xC000), dist.Sum), "in has 11 elements, want Size()·3 = 12"},
		{"AllGather of the wrong size", r.AllGather(ten(kernels.F32, 19, 0xB000), ten(kernels.F32, 5, 0xC000)), "out has 19 elements, want Size()·5 = 20"},
		{"a tensor of another GPU", r.AllReduce(other, dist.Sum), "not on this rank's GPU 3"},
		{"dtypes that differ", r.AllGather(ten(kernels.F32, 20, 0xB000), ten(kernels.BF16, 5, 0xC000)), "in is bfloat16, out is float32"},
		{"root out of range", r.Broadcast(ten(kernels.F32, 6, 0xA000), 4), "root 4: want a rank in [0, 4)"},
		{"Reduce's root out of range", r.Reduce(ten(kernels.F32, 6, 0xA000), dist.Sum, -1), "root -1: want a rank in [0, 4)"},
		{"no memory", r.AllReduce(ten(kernels.F32, 6, 0), dist.Sum), "no device memory"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) || !strings.Contains(tc.err.Error(), "rank 2 of 4") {
			t.Errorf("%s: %v, want an error naming rank 2 of 4 and saying %q", tc.name, tc.err, tc.want)
		}
	}
	if got := f.log(); len(got) != 0 {
		t.Errorf("refused calls reached NCCL or the driver: %#x", got)
	}
	// NCCL's own failure is final and aborts the communicator.
	err = r.AllReduce(ten(kernels.F32, 13, 0xA000), dist.Sum)
	if err == nil || !strings.Contains(err.Error(), "nccl: rank 2 of 4 (GPU 3): AllReduce(rank 2 of 4, float32 [13]): nccl: ncclAllReduce failed: invalid argument (fake) (4) [NCCL's last warning: fake failure]") {
		t.Fatalf("failing all-reduce: %v", err)
	}
	if e2 := r.AllReduce(ten(kernels.F32, 6, 0xA000), dist.Sum); e2 == nil || e2.Error() != err.Error() {
		t.Fatalf("after the failure: %v, want the same error again", e2)
	}
	aborted0, _, _, _, _ := f.state()
	if aborted0 != 1 || r.comm.Load() != 0 {
		t.Fatalf("after the failure: %d aborts, comm %#x; want 1, 0", aborted0, r.comm.Load())
	}
	f.log()
	// Close: rank 3 (working) is destroyed, rank 2 (aborted) is not destroyed again; streams and
	// events are released.
	if err := rs[1].Close(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := r.AllReduce(ten(kernels.F32, 6, 0xA000), dist.Sum); err == nil {
		t.Fatal("all-reduce after Close: no error")
	}
	aborted, evs, streams, _, _ := f.state()
	var out [3 + 16*8]uint64
	stateFn, _ := purego.Dlsym(f.nc.lib, "fake_state")
	purego.SyscallN(stateFn, uintptr(unsafe.Pointer(&out[0])))
	if aborted != aborted0 || out[1] != 1 || streams != 2 || evs < 2+len(dones) {
		t.Fatalf("Close: %d aborts in all, %d destroyed, %d streams and %d events released; want %d, 1, 2, ≥ %d", aborted, out[1], streams, evs, aborted0, 2+len(dones))
	}
}

// TestNCCLRankWatchdog: a collective never done (the events stay not ready) past the timeout, an
// asynchronous NCCL error and a dead peer (Alive) each abort the communicator within a few polls;
// the error names the rank, the GPU and the cause, and a host waiting in Sync is not left behind.
func TestNCCLRankWatchdog(t *testing.T) {
	f := newFakeRanks(t)
	id, _ := f.nc.uniqueID()
	type aliveErr struct{ err error }
	var alive atomic.Pointer[aliveErr]
	alive.Store(&aliveErr{})
	o := RankOptions{Poll: 5 * time.Millisecond, Timeout: 100 * time.Millisecond,
		Alive: func() error { return alive.Load().err }}
	for _, tc := range []struct {
		name  string
		cause func()
		wants []string
	}{
		{"timeout", func() { f.set(0, 600) }, []string{"nccl: rank 1 of 2 (GPU 5): AllReduce(rank 1 of 2, float32 [6]) not done after", "timeout 100ms"}},
		{"async error", func() { f.set(6, 0) }, []string{"nccl: rank 1 of 2 (GPU 5): NCCL reports an asynchronous error", "remote process exited"}},
		{"dead peer", func() { alive.Store(&aliveErr{errors.New("process 1 (node7:29500) is gone")}) }, []string{"nccl: rank 1 of 2 (GPU 5): process 1 (node7:29500) is gone"}},
	} {
		f.set(0, 0)
		alive.Store(&aliveErr{})
		rs, err := newRanks(f.nc, f.devs, id, 2, 0, o)
		if err != nil {
			t.Fatal(err)
		}
		r := rs[1]
		if err := r.AllReduce(&kernels.Tensor{Dev: r.d, DType: kernels.F32, Shape: []int{6}, Ptr: 0xA000}, dist.Sum); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		aborted0, _, _, _, _ := f.state()
		t0 := time.Now()
		tc.cause()
		var got error
		for got == nil && time.Since(t0) < 5*time.Second {
			time.Sleep(5 * time.Millisecond)
			got = r.Err()
		}
		el := time.Since(t0)
		if got == nil {
			t.Fatalf("%s: no error after %s", tc.name, el)
		}
		for _, w := range tc.wants {
			if !strings.Contains(got.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.name, got, w)
			}
		}
		if aborted, _, _, _, _ := f.state(); aborted <= aborted0 {
			t.Errorf("%s: the communicator was not aborted", tc.name)
		}
		if err := r.Wait(); err == nil || err.Error() != got.Error() {
			t.Errorf("%s: Wait after the abort: %v, want %v", tc.name, err, got)
		}
		t.Logf("%s: aborted after %s: %v", tc.name, el.Round(time.Millisecond), got)
		f.set(0, 0)
		alive.Store(&aliveErr{})
		for _, r := range rs {
			r.Close()
		}
	}
	// Abort from outside (another rank of this process failed): every later call has its reason.
	rs, err := newRanks(f.nc, f.devs, id, 2, 0, o)
	if err != nil {
		t.Fatal(err)
	}
	rs[0].Abort(fmt.Errorf("rank 1 failed: out of memory"))
	if err := rs[0].Wait(); err == nil || !strings.Contains(err.Error(), "nccl: rank 0 of 2 (GPU 3): rank 1 failed: out of memory") {
		t.Errorf("after Abort: %v", err)
	}
	for _, r := range rs {
		r.Close()
	}
}

// ---------------------------------------------------------------------------------------------
// On GPUs: every visible GPU (up to 8; one is enough) as the ranks of one communicator, one
// goroutine each, as the trainer drives them.

// TestNCCLRanks: AllReduce (sum, mean), ReduceScatter, AllGather and Broadcast of fresh random fp32
// and bf16 values against the host, each between compute on the rank's stream: FromHost before
// (the collective must wait for it), Scale by 2 after Wait (it must wait for the collective). At
// world size 1 this is NCCL's path on one GPU (the id by value, the streams, the events).
func TestNCCLRanks(t *testing.T) {
	d0 := gpu(t)
	devs := []*Device{d0}
	for i := 1; i < 8; i++ {
		d, err := New(i)
		if err != nil {
			break
		}
		devs = append(devs, d)
	}
	rs, err := NewLocalRanks(devs, RankOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatalf("NewLocalRanks of %d GPUs: %v", len(devs), err)
	}
	defer func() {
		for _, r := range rs {
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
	}()
	R := len(rs)
	r := seedRand(t)
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		for _, k := range []int{1, 1000, 1<<18 + 3} { // elements per rank's slice
			in := make([][]float32, R) // rank q's input [R·k]
			for q := range in {
				in[q] = make([]float32, R*k)
				for i := range in[q] {
					in[q][i] = float32(r.NormFloat64()) * float32(q+1)
				}
				if dt == kernels.BF16 {
					roundBF16(in[q])
				}
			}
			tol := 1e-5
			if dt == kernels.BF16 {
				tol = float64(R+1) / 128 // bf16 rounding of partial sums, and of the result ×2
			}
			type res struct{ ar, arMean, rs, ag, bc, rd []float32 }
			out := make([]res, R)
			errs := make([]error, R)
			done := make(chan int)
			for q := range rs {
				go func(q int) {
					defer func() { done <- q }()
					c, d := rs[q], rs[q].Device()
					get := func(x *kernels.Tensor) []float32 {
						if err := c.Wait(); err != nil {
							errs[q] = err
							return nil
						}
						d.Scale(x, 2) // on the compute stream, after the collective
						h := make([]float32, x.Numel())
						d.ToHost(h, x)
						d.Free(x)
						return h
					}
					put := func(v []float32) *kernels.Tensor {
						x := d.Alloc(dt, len(v))
						d.FromHost(x, v)
						return x
					}
					x := put(in[q])
					if errs[q] = c.AllReduce(x, dist.Sum); errs[q] != nil {
						return
					}
					out[q].ar = get(x)
					x = put(in[q])
					if errs[q] = c.AllReduce(x, dist.Mean); errs[q] != nil {
						return
					}
					out[q].arMean = get(x)
					x, y := put(in[q]), d.Alloc(dt, k)
					if errs[q] = c.ReduceScatter(y, x, dist.Sum); errs[q] != nil {
						return
					}
					out[q].rs = get(y)
					d.Free(x)
					x, y = put(in[q][q*k:(q+1)*k]), d.Alloc(dt, R*k)
					if errs[q] = c.AllGather(y, x); errs[q] != nil {
						return
					}
					out[q].ag = get(y)
					d.Free(x)
					x = put(in[q])
					if errs[q] = c.Broadcast(x, R-1); errs[q] != nil {
						return
					}
					out[q].bc = get(x)
					x = put(in[q])
					if errs[q] = c.Reduce(x, dist.Mean, 0); errs[q] != nil {
						return
					}
					out[q].rd = get(x)
					if errs[q] == nil {
						errs[q] = d.Sync()
					}
				}(q)
			}
			for range rs {
				<-done
			}
			for q, err := range errs {
				if err != nil {
					t.Fatalf("%s k=%d rank %d: %v", dt, k, q, err)
				}
			}
			name := fmt.Sprintf("%s k=%d on %d GPUs", dt, k, R)
			check := func(what string, q int, got []float32, want func(i int) (float64, float64)) {
				bad := 0
				for i, g := range got {
					w, s := want(i)
					if e := abs64(float64(g)-w) / max(s, 1e-30); !(e <= tol) {
						if bad < 3 {
							t.Errorf("%s %s rank %d element %d: %g, want %g (error %.3g·Σ|x|)", name, what, q, i, g, w, e)
						}
						bad++
					}
				}
			}
			sum := func(i int) (float64, float64) { // 2·Σ_q in[q][i] and its scale
				var w, s float64
				for q := range in {
					w += float64(in[q][i])
					s += abs64(float64(in[q][i]))
				}
				return 2 * w, 2 * s
			}
			for q := range rs {
				check("AllReduce sum", q, out[q].ar, sum)
				check("AllReduce mean", q, out[q].arMean, func(i int) (float64, float64) { w, s := sum(i); return w / float64(R), s / float64(R) })
				check("ReduceScatter sum", q, out[q].rs, func(i int) (float64, float64) { return sum(q*k + i) })
				check("AllGather", q, out[q].ag, func(i int) (float64, float64) {
					v := 2 * float64(in[i/k][i])
					return v, abs64(v)
				})
				check("Broadcast", q, out[q].bc, func(i int) (float64, float64) { v := 2 * float64(in[R-1][i]); return v, abs64(v) })
				check("Reduce mean to 0", q, out[q].rd, func(i int) (float64, float64) {
					if q != 0 { // read only
						v := 2 * float64(in[q][i])
						return v, abs64(v)
					}
					w, s := sum(i)
					return w / float64(R), s / float64(R)
				})
			}
			t.Logf("%s: all collectives match the host", name)
		}
	}
}

func abs64(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
