package cuda

import (
	"fmt"
	"math"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/fewstep/fewstep/kernels"
)

// NCCL tests. Without a GPU (CI): the library search and its error, the call plumbing (libc
// functions stand in for NCCL's) and NCCL_NVLS_ENABLE reaching the C environment. With two or more
// GPUs: all-reduce (sum, mean) and broadcast of fresh random fp32 and bf16 tensors of odd sizes
// against the host, and the errors for bad arguments.

// TestNCCLSearchError: $FEWSTEP_NCCL comes first, then the loader's libnccl.so.2, then the pip
// wheels; when none loads, the error names every library tried and the globs that matched nothing.
func TestNCCLSearchError(t *testing.T) {
	venv := t.TempDir()
	fake := filepath.Join(venv, "lib", "python3.99", "site-packages", "nvidia", "nccl", "lib", "libnccl.so.2")
	if err := os.MkdirAll(filepath.Dir(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fake, []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VIRTUAL_ENV", venv)
	missing := filepath.Join(t.TempDir(), "no", "libnccl.so.2")
	t.Setenv(ncclLibEnv, missing)
	paths, misses := ncclSearch()
	if len(paths) < 3 || paths[0] != missing || paths[1] != "libnccl.so.2" {
		t.Fatalf("search order %q: want $%s, then libnccl.so.2, then the wheels", paths, ncclLibEnv)
	}
	found := false
	for _, p := range paths[2:] {
		found = found || p == fake
	}
	if !found {
		t.Fatalf("the wheel under $VIRTUAL_ENV (%s) is not in the search %q", fake, paths)
	}
	// The loader's libnccl.so.2 is left out: the machine may have one.
	_, err := openNCCL([]string{missing, fake, "libfewstep-no-such-nccl.so.2"}, misses)
	if err == nil {
		t.Fatal("openNCCL of missing libraries returned no error")
	}
	for _, want := range []string{"NCCL not found", missing, fake, "libfewstep-no-such-nccl.so.2", ncclLibEnv, "nvidia-nccl-cu13"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if len(misses) > 0 && !strings.Contains(err.Error(), misses[0]) {
		t.Errorf("error %q does not name the glob that matched nothing %q", err, misses[0])
	}
	// A library that loads but is not NCCL.
	if _, err := purego.Dlopen("libc.so.6", purego.RTLD_NOW); err == nil {
		_, err := openNCCL([]string{"libc.so.6"}, nil)
		if err == nil || !strings.Contains(err.Error(), "libc.so.6 lacks ncclGetVersion") {
			t.Errorf("openNCCL(libc.so.6) = %v, want an error saying it lacks ncclGetVersion", err)
		}
	}
}

// libcFn resolves a libc function to stand in for an NCCL entry point.
func libcFn(t *testing.T, name string) uintptr {
	h, err := purego.Dlopen("libc.so.6", purego.RTLD_NOW)
	if err != nil {
		t.Skipf("no libc.so.6 to stand in for NCCL: %v", err)
	}
	f, err := purego.Dlsym(h, name)
	if err != nil || f == 0 {
		t.Skipf("libc.so.6 lacks %s", name)
	}
	return f
}

// TestNCCLCallPlumbing: ncclLib.call keeps the writes through callers' locals (go:uintptrescapes,
// as call_test.go checks for drv.call), and check turns a nonzero result into an error with the
// call's name, the code, ncclGetErrorString's text and ncclGetLastError's. libc stands in: abs(v)
// returns v as a "result", strerror(code) as ncclGetErrorString (it returns a C string for a code).
func TestNCCLCallPlumbing(t *testing.T) {
	fill, abs, strerror := libcFn(t, "sigfillset"), libcFn(t, "abs"), libcFn(t, "strerror")
	n := &ncclLib{getErrorString: strerror, getLastError: strerror}
	for depth := 0; depth < 3000; depth += 7 {
		done := make(chan uint64)
		go func() { done <- ncclCallAtDepth(n, fill, depth) }()
		if got := <-done; got == 0 {
			t.Fatalf("at depth %d sigfillset through ncclLib.call left the local at 0: a stack move lost the write", depth)
		}
	}
	if err := n.call("abs(0)", abs, 0); err != nil {
		t.Fatalf("result 0 gave error %v", err)
	}
	err := n.call("ncclAbs", abs, 4) // result 4 (ncclInvalidArgument's code)
	want := fmt.Sprintf("nccl: ncclAbs failed: %s (4) [NCCL's last warning: %s]", cstring(mustCall(strerror, 4)), cstring(mustCall(strerror, 0)))
	if err == nil || err.Error() != want {
		t.Fatalf("result 4 gave error %v, want %q", err, want)
	}
	// The result is a C int: only the low 32 bits count.
	if err := n.call("abs(1<<32)", abs, 1<<32); err != nil {
		t.Fatalf("a result of 0 in the low 32 bits gave error %v", err)
	}
}

func mustCall(fn uintptr, arg uintptr) uintptr {
	r, _, _ := purego.SyscallN(fn, arg)
	return r
}

//go:noinline
func ncclCallAtDepth(n *ncclLib, fill uintptr, depth int) uint64 {
	if depth > 0 {
		return ncclCallAtDepth(n, fill, depth-1)
	}
	var m [16]uint64 // sigset_t, written by "NCCL"
	if err := n.call("sigfillset", fill, uintptr(unsafe.Pointer(&m))); err != nil {
		panic(err)
	}
	return m[0]
}

// TestNCCLNVLSOff: unless the user set it, NCCL_NVLS_ENABLE=0 reaches the C environment (what
// NCCL's getenv reads), not just Go's copy.
func TestNCCLNVLSOff(t *testing.T) {
	getenv := libcFn(t, "getenv")
	t.Setenv("NCCL_NVLS_ENABLE", "") // restored after the test
	os.Unsetenv("NCCL_NVLS_ENABLE")
	cGetenv := func() string {
		name := append([]byte("NCCL_NVLS_ENABLE"), 0)
		r, _, _ := purego.SyscallN(getenv, uintptr(unsafe.Pointer(&name[0])))
		return cstring(r)
	}
	if v := cGetenv(); v != "" {
		t.Fatalf("C getenv after unset = %q", v)
	}
	nvlsOff()
	if v, c := os.Getenv("NCCL_NVLS_ENABLE"), cGetenv(); v != "0" || c != "0" {
		t.Fatalf("after nvlsOff NCCL_NVLS_ENABLE is %q in Go and %q in C, want 0 in both", v, c)
	}
}

// ---------------------------------------------------------------------------------------------
// With two or more GPUs: every visible GPU (up to 8) in one communicator.

var (
	ncclTOnce sync.Once
	ncclTComm *Comm
	ncclTSkip string // fewer than 2 GPUs
	ncclTErr  error  // NewComm failed
)

func gpuComm(t *testing.T) *Comm {
	d0 := gpu(t)
	ncclTOnce.Do(func() {
		devs := []*Device{d0}
		for i := 1; i < 8; i++ {
			d, err := New(i)
			if err != nil {
				if i == 1 {
					ncclTSkip = fmt.Sprintf("one GPU only: %v", err)
				}
				break
			}
			devs = append(devs, d)
		}
		if ncclTSkip != "" {
			return
		}
		ncclTComm, ncclTErr = NewComm(devs)
		if ncclTErr == nil {
			fmt.Printf("nccl: NCCL %s (%s), %d GPUs: %s\n", ncclTComm.Version(), theNCCL.path, len(devs), d0.Info)
		}
	})
	if ncclTSkip != "" {
		t.Skip(ncclTSkip)
	}
	if ncclTErr != nil {
		t.Fatalf("NewComm: %v", ncclTErr)
	}
	return ncclTComm
}

// ncclSizes are the element counts tried: one, a small odd count, and 1 Mi + 3 (not a multiple of
// any chunk or vector width).
var ncclSizes = []int{1, 1000, 1<<20 + 3}

// upload puts fresh random normal values (rounded to bf16 for bf16 tensors, so the host sees what
// the GPU holds) on every rank; rank r's values are scaled by r+1 so the ranks differ in size.
func upload(c *Comm, r *rand.Rand, dt kernels.DType, n int) ([]*kernels.Tensor, [][]float32) {
	ts := make([]*kernels.Tensor, c.Size())
	host := make([][]float32, c.Size())
	for k, d := range c.Devices() {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64()) * float32(k+1)
		}
		if dt == kernels.BF16 {
			roundBF16(v)
		}
		ts[k], host[k] = d.Alloc(dt, n), v
		d.FromHost(ts[k], v)
	}
	return ts, host
}

func download(t *testing.T, c *Comm, ts []*kernels.Tensor) [][]float32 {
	out := make([][]float32, len(ts))
	for k, d := range c.Devices() {
		out[k] = make([]float32, ts[k].Numel())
		d.ToHost(out[k], ts[k])
		if err := d.Sync(); err != nil {
			t.Fatalf("GPU %d: %v", d.Ordinal, err)
		}
		d.Free(ts[k])
	}
	return out
}

// TestNCCLAllReduce: sum and mean against the host's float64 sum of the same values. Bound per
// element, relative to s = Σ_r |x_r| (times 1/n for the mean): fp32 1e-6 (n+1 fp32 roundings,
// each ≤ 2⁻²⁴ ≈ 6e-8 of s); bf16 sum (n−1)·2⁻⁸: n−1 roundings to bf16 of partial sums, each off by
// at most 2⁻⁸ of its magnitude ≤ s; bf16 mean (n+1)·2⁻⁸: also NCCL's pre-scaling of every input by
// bf16(1/n) (≤ 2·2⁻⁸ of |x_r|/n: the scalar and the product; exact for n = 2). Every rank must
// hold the same bits (replicas of a model stay identical).
func TestNCCLAllReduce(t *testing.T) {
	c := gpuComm(t)
	r := seedRand(t)
	R := c.Size()
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		for _, mean := range []bool{false, true} {
			bound := 1e-6
			if dt == kernels.BF16 && mean {
				bound = float64(R+1) / 256
			} else if dt == kernels.BF16 {
				bound = float64(R-1) / 256
			}
			for _, n := range ncclSizes {
				name := fmt.Sprintf("%s/n=%d/sum", dt, n)
				if mean {
					name = fmt.Sprintf("%s/n=%d/mean", dt, n)
				}
				ts, host := upload(c, r, dt, n)
				var err error
				if mean {
					err = c.AllReduceMean(ts)
				} else {
					err = c.AllReduceSum(ts)
				}
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got := download(t, c, ts)
				scale := 1.0
				if mean {
					scale = 1 / float64(R)
				}
				worst, bad, diff := 0.0, 0, 0
				for i := 0; i < n; i++ {
					var want, s float64
					for k := 0; k < R; k++ {
						want += float64(host[k][i])
						s += math.Abs(float64(host[k][i]))
					}
					want, s = want*scale, s*scale
					e := math.Abs(float64(got[0][i]) - want)
					if s > 0 {
						e /= s
					}
					if !(e <= bound) { // NaN too
						if bad < 5 {
							t.Errorf("%s: element %d = %g, want %g (inputs %v): error %.3g·Σ|x| > %.3g", name, i, got[0][i], want, column(host, i), e, bound)
						}
						bad++
					}
					worst = max(worst, e)
					for k := 1; k < R; k++ {
						if math.Float32bits(got[k][i]) != math.Float32bits(got[0][i]) {
							diff++
						}
					}
				}
				if bad > 0 {
					t.Errorf("%s: %d of %d elements off", name, bad, n)
				}
				if diff > 0 {
					t.Errorf("%s: %d elements differ between ranks", name, diff)
				}
				t.Logf("%s on %d GPUs: worst error %.3g·Σ|x| (bound %.3g)", name, R, worst, bound)
			}
		}
	}
}

func column(host [][]float32, i int) []float32 {
	c := make([]float32, len(host))
	for k := range host {
		c[k] = host[k][i]
	}
	return c
}

// TestNCCLBroadcast: from the last rank (not 0), every rank ends with its values bit for bit.
func TestNCCLBroadcast(t *testing.T) {
	c := gpuComm(t)
	r := seedRand(t)
	root := c.Size() - 1
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		for _, n := range ncclSizes {
			ts, host := upload(c, r, dt, n)
			if err := c.Broadcast(ts, root); err != nil {
				t.Fatalf("%s n=%d: %v", dt, n, err)
			}
			got := download(t, c, ts)
			for k := range got {
				bad := 0
				for i := range got[k] {
					if math.Float32bits(got[k][i]) != math.Float32bits(host[root][i]) {
						bad++
					}
				}
				if bad > 0 {
					t.Errorf("%s n=%d: rank %d differs from root %d at %d of %d elements", dt, n, k, root, bad, n)
				}
			}
		}
	}
}

// TestNCCLErrors: bad arguments give errors that name them, nothing is queued, and the
// communicator still works; NCCL's own failures come back naming the call and NCCL's words.
func TestNCCLErrors(t *testing.T) {
	c := gpuComm(t)
	devs := c.Devices()
	R := len(devs)
	alloc := func(dt kernels.DType, shape ...[]int) []*kernels.Tensor {
		ts := make([]*kernels.Tensor, R)
		for k, d := range devs {
			s := shape[0]
			if k < len(shape) {
				s = shape[k]
			}
			ts[k] = d.Alloc(dt, s...)
		}
		return ts
	}
	free := func(ts []*kernels.Tensor) {
		for _, x := range ts {
			x.Dev.Free(x)
		}
	}
	expect := func(what string, err error, wants ...string) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: no error", what)
			return
		}
		for _, w := range wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", what, err, w)
			}
		}
	}
	ts := alloc(kernels.F32, []int{4, 5}, []int{5, 4})
	expect("mismatched shapes", c.AllReduceSum(ts), "tensor 1 is float32 [5 4]", "tensor 0 is float32 [4 5]")
	free(ts)
	ts = alloc(kernels.F32, []int{6})
	ts[1] = devs[1].Alloc(kernels.BF16, 6)
	expect("mismatched dtypes", c.AllReduceSum(ts), "tensor 1 is bfloat16 [6]", "tensor 0 is float32 [6]")
	devs[1].Free(ts[1])
	ts[1] = devs[1].Alloc(kernels.F32, 6)
	expect("one tensor too few", c.AllReduceSum(ts[:R-1]), fmt.Sprintf("%d tensors for %d devices", R-1, R))
	swapped := append([]*kernels.Tensor(nil), ts...)
	swapped[0], swapped[1] = ts[1], ts[0]
	expect("tensors on the wrong devices", c.AllReduceSum(swapped), "tensor 0", "not on rank 0's device")
	expect("root out of range", c.Broadcast(ts, R), fmt.Sprintf("root %d", R))
	// The communicator still works.
	for k, d := range devs {
		d.FromHost(ts[k], []float32{1, 2, 3, 4, 5, float32(k)})
	}
	if err := c.AllReduceSum(ts); err != nil {
		t.Fatalf("all-reduce after the refused calls: %v", err)
	}
	got := download(t, c, ts)
	for k := range got {
		for i := 0; i < 5; i++ {
			if got[k][i] != float32((i+1)*R) {
				t.Fatalf("all-reduce after the refused calls: rank %d has %v, want [1 2 3 4 5]·%d, then %d", k, got[k], R, R*(R-1)/2)
			}
		}
		if got[k][5] != float32(R*(R-1)/2) {
			t.Fatalf("all-reduce after the refused calls: rank %d has %v, want [1 2 3 4 5]·%d, then %d", k, got[k], R, R*(R-1)/2)
		}
	}
	// NCCL's own error: ncclCommCount of a NULL communicator (a check, no side effect).
	var cnt int32
	expect("ncclCommCount(NULL)", c.nc.call("ncclCommCount", c.nc.commCount, 0, uintptr(unsafe.Pointer(&cnt))),
		"nccl: ncclCommCount failed: invalid argument", "(4)")
	if err := c.nc.call("ncclCommCount", c.nc.commCount, c.comms[0], uintptr(unsafe.Pointer(&cnt))); err != nil || int(cnt) != R {
		t.Errorf("ncclCommCount = %d, %v; want %d", cnt, err, R)
	}
}

// fakeNCCL is a stand-in libnccl.so.2 with nccl.h's prototypes: it records the arguments of every
// collective (and whether it came inside a group), numbers communicators 0x1000 + device
// (ncclCommInitAll) or 0x2000 + rank (ncclCommInitRank), and fails a collective of 13 elements with
// ncclInvalidArgument and a last warning. The collectives of ncclCommInitAll's communicators must
// come inside a group (one thread drives them all); a rank's own need not. It also stands in for
// the driver calls of a rank's streams and events (fake_cu*), logging them in order with the
// collectives, so that a test sees what waits for what.
const fakeNCCL = `
#include <stddef.h>
#include <stdint.h>
#include <string.h>
typedef struct ncclComm* ncclComm_t;
typedef struct { char internal[128]; } ncclUniqueId;
static char last[256] = "";
static int depth, ndev, destroyed, nrec, aborted, asyncErr, queryRes, nranksSeen, nevent, nstream, evDestroyed, streamDestroyed;
static uintptr_t cur;
static ncclComm_t comms[8];
static int commDev[8];
static uint64_t recs[16][8];
static uint64_t inits[8][4]; static int ninit; static unsigned char initID[8][128];
int fake_ok(void* x) { return 0; }
int ncclGetVersion(int* v) { *v = 22707; return 0; }
const char* ncclGetErrorString(int r) { return r == 4 ? "invalid argument (fake)" : r == 6 ? "remote process exited or there was a network error (fake)" : "other (fake)"; }
const char* ncclGetLastError(ncclComm_t c) { return last; }
int ncclCommInitAll(ncclComm_t* c, int n, const int* devlist) {
	ndev = n;
	for (int i = 0; i < n; i++) comms[i] = c[i] = (ncclComm_t)(uintptr_t)(0x1000 + devlist[i]);
	return 0;
}
int ncclGetUniqueId(ncclUniqueId* id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(3 * i + 1); return 0; }
int ncclCommInitRank(ncclComm_t* c, int nranks, ncclUniqueId id, int rank) {
	if (ninit < 8) {
		uint64_t v[4] = {nranks, rank, depth, cur};
		memcpy(inits[ninit], v, sizeof v);
		memcpy(initID[ninit], id.internal, 128);
		ninit++;
	}
	if (rank < 0 || rank >= 8) return 4;
	nranksSeen = nranks;
	commDev[rank] = (int)(cur - 0x9000);
	*c = (ncclComm_t)(uintptr_t)(0x2000 + rank);
	return 0;
}
int ncclCommDestroy(ncclComm_t c) { destroyed++; return 0; }
int ncclCommAbort(ncclComm_t c) { aborted++; return 0; }
int ncclCommGetAsyncError(ncclComm_t c, int* r) { *r = asyncErr; return 0; }
int ncclCommCount(ncclComm_t c, int* n) { *n = (uintptr_t)c >= 0x2000 ? nranksSeen : ndev; return 0; }
int ncclCommCuDevice(ncclComm_t c, int* d) {
	uintptr_t u = (uintptr_t)c;
	*d = u >= 0x2000 ? commDev[u - 0x2000] : (int)(u - 0x1000);
	return 0;
}
int ncclCommUserRank(ncclComm_t c, int* r) {
	if ((uintptr_t)c >= 0x2000) { *r = (int)((uintptr_t)c - 0x2000); return 0; }
	for (int i = 0; i < ndev; i++) if (comms[i] == c) { *r = i; return 0; }
	return 4;
}
int ncclGroupStart(void) { depth++; return 0; }
int ncclGroupEnd(void) { depth--; return 0; }
static int rec(int kind, const void* s, void* r, size_t count, int dtype, int x, ncclComm_t c, void* stream) {
	uint64_t v[8] = {kind, (uintptr_t)s, (uintptr_t)r, count, dtype, x, (uintptr_t)c, (uintptr_t)stream};
	if (nrec < 16) memcpy(recs[nrec++], v, sizeof v);
	if ((uintptr_t)c < 0x2000 && depth != 1) { strcpy(last, "not in a group"); return 5; }
	if (count == 13) { strcpy(last, "fake failure"); return 4; }
	return 0;
}
int ncclAllReduce(const void* s, void* r, size_t count, int dtype, int op, ncclComm_t c, void* stream) {
	return rec(1, s, r, count, dtype, op, c, stream);
}
int ncclBroadcast(const void* s, void* r, size_t count, int dtype, int root, ncclComm_t c, void* stream) {
	return rec(2, s, r, count, dtype, root, c, stream);
}
int ncclReduceScatter(const void* s, void* r, size_t count, int dtype, int op, ncclComm_t c, void* stream) {
	return rec(3, s, r, count, dtype, op, c, stream);
}
int ncclAllGather(const void* s, void* r, size_t count, int dtype, ncclComm_t c, void* stream) {
	return rec(4, s, r, count, dtype, -1, c, stream);
}
int ncclReduce(const void* s, void* r, size_t count, int dtype, int op, int root, ncclComm_t c, void* stream) {
	return rec(5, s, r, count, dtype, op * 256 + root, c, stream);
}
/* driver stand-ins: events 0x7000+, streams 0x6000+; records (kind 10) and waits (kind 11) are
   logged with the collectives */
int fake_cuCtxSetCurrent(uintptr_t ctx) { cur = ctx; return 0; }
int fake_cuStreamCreate(uintptr_t* s, unsigned flags) { *s = 0x6000 + nstream++; return 0; }
int fake_cuStreamDestroy(uintptr_t s) { streamDestroyed++; return 0; }
int fake_cuEventCreate(uintptr_t* e, unsigned flags) { *e = 0x7000 + nevent++; return flags == 2 ? 0 : 1; }
int fake_cuEventDestroy(uintptr_t e) { evDestroyed++; return 0; }
int fake_cuEventQuery(uintptr_t e) { return queryRes; }
static void logDrv(int kind, uintptr_t a, uintptr_t b) {
	uint64_t v[8] = {kind, a, b, 0, 0, 0, 0, 0};
	if (nrec < 16) memcpy(recs[nrec++], v, sizeof v);
}
int fake_cuEventRecord(uintptr_t e, uintptr_t s) { logDrv(10, e, s); return 0; }
int fake_cuStreamWaitEvent(uintptr_t s, uintptr_t e, unsigned flags) { logDrv(11, s, e); return 0; }
int fake_set(int async, int query) { asyncErr = async; queryRes = query; return 0; }
int fake_state(uint64_t* out) { out[0] = depth; out[1] = destroyed; out[2] = nrec; nrec = 0; memcpy(out + 3, recs, sizeof recs); return 0; }
int fake_state2(uint64_t* out) {
	out[0] = aborted; out[1] = evDestroyed; out[2] = streamDestroyed; out[3] = ninit;
	memcpy(out + 4, inits, sizeof inits);
	memcpy(out + 4 + 32, initID, sizeof initID);
	ninit = 0;
	return 0;
}
`

// buildFakeNCCL compiles fakeNCCL (skipping the test without a C compiler) and opens it as NCCL.
func buildFakeNCCL(t *testing.T) *ncclLib {
	t.Helper()
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	dir := t.TempDir()
	src, lib := filepath.Join(dir, "fake.c"), filepath.Join(dir, "libfakenccl.so") // not the real name, RTLD_LOCAL: no clash with a real NCCL
	if err := os.WriteFile(src, []byte(fakeNCCL), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-shared", "-fPIC", "-O1", "-o", lib, src).CombinedOutput(); err != nil {
		t.Skipf("no C compiler to build the stand-in NCCL (%s: %v) %s", cc, err, out)
	}
	nc, err := openNCCL([]string{filepath.Join(dir, "absent.so"), lib}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if nc.version != 22707 || nc.path != lib {
		t.Fatalf("opened %s version %d, want %s 22707", nc.path, nc.version, lib)
	}
	return nc
}

// TestNCCLFakePlumbing runs Comm's NCCL calls against fakeNCCL (built with the C compiler, skipped
// without one) and two stand-in devices: every argument reaches NCCL in nccl.h's order with
// nccl.h's enum values, each collective is inside one group, the group is closed after a failure,
// and the failure names the call, the rank, the shapes and NCCL's words.
func TestNCCLFakePlumbing(t *testing.T) {
	nc := buildFakeNCCL(t)
	ok, _ := purego.Dlsym(nc.lib, "fake_ok")
	stateFn, _ := purego.Dlsym(nc.lib, "fake_state")
	state := func() (depth, destroyed int, recs [][8]uint64) {
		var out [3 + 16*8]uint64
		purego.SyscallN(stateFn, uintptr(unsafe.Pointer(&out[0])))
		for i := 0; i < int(out[2]); i++ {
			recs = append(recs, [8]uint64(out[3+8*i:3+8*i+8]))
		}
		return int(out[0]), int(out[1]), recs
	}
	// Two devices that are GPUs 3 and 5: the driver calls of enter and Sync go to fake_ok.
	devs := []*Device{
		{drv: &drv{cuCtxSetCurrent: ok, cuStreamSynchronize: ok}, Ordinal: 3, stream: 0x5003},
		{drv: &drv{cuCtxSetCurrent: ok, cuStreamSynchronize: ok}, Ordinal: 5, stream: 0x5005},
	}
	c, err := newComm(nc, devs, []int32{3, 5})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.comms, []uintptr{0x1003, 0x1005}) || c.Version() != "2.27.7" {
		t.Fatalf("communicators %#x version %s, want [0x1003 0x1005] 2.27.7", c.comms, c.Version())
	}
	tensors := func(dt kernels.DType, n int) []*kernels.Tensor {
		return []*kernels.Tensor{{Dev: devs[0], DType: dt, Shape: []int{n}, Ptr: 0xA000},
			{Dev: devs[1], DType: dt, Shape: []int{n}, Ptr: 0xB000}}
	}
	// kind (1 all-reduce, 2 broadcast), send, recv, count, datatype, op or root, comm, stream.
	for _, tc := range []struct {
		name string
		run  func() error
		want [][8]uint64
	}{
		{"AllReduceSum fp32", func() error { return c.AllReduceSum(tensors(kernels.F32, 6)) },
			[][8]uint64{{1, 0xA000, 0xA000, 6, 7, 0, 0x1003, 0x5003}, {1, 0xB000, 0xB000, 6, 7, 0, 0x1005, 0x5005}}},
		{"AllReduceMean bf16", func() error { return c.AllReduceMean(tensors(kernels.BF16, 1<<20+3)) },
			[][8]uint64{{1, 0xA000, 0xA000, 1<<20 + 3, 9, 4, 0x1003, 0x5003}, {1, 0xB000, 0xB000, 1<<20 + 3, 9, 4, 0x1005, 0x5005}}},
		{"Broadcast fp16 from 1", func() error { return c.Broadcast(tensors(kernels.F16, 1), 1) },
			[][8]uint64{{2, 0xA000, 0xA000, 1, 6, 1, 0x1003, 0x5003}, {2, 0xB000, 0xB000, 1, 6, 1, 0x1005, 0x5005}}},
	} {
		if err := tc.run(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		depth, _, recs := state()
		if depth != 0 || !slices.Equal(recs, tc.want) {
			t.Errorf("%s: NCCL got %#x (group depth after: %d), want %#x (0)", tc.name, recs, depth, tc.want)
		}
	}
	err = c.AllReduceSum(tensors(kernels.F32, 13)) // the fake fails it on rank 0
	want := "nccl: ncclAllReduce(sum)(rank 0, float32 [13]) failed: invalid argument (fake) (4) [NCCL's last warning: fake failure]"
	if err == nil || err.Error() != want {
		t.Errorf("failing all-reduce: %v, want %s", err, want)
	}
	if depth, _, recs := state(); depth != 0 || len(recs) != 1 {
		t.Errorf("after the failure: group depth %d, %d calls; want 0 (the group closed), 1 (rank 1 not called)", depth, len(recs))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, destroyed, _ := state(); destroyed != 2 {
		t.Errorf("Close destroyed %d communicators, want 2", destroyed)
	}
	if err := c.AllReduceSum(tensors(kernels.F32, 6)); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("all-reduce after Close: %v, want an error saying the communicator is closed", err)
	}
}
