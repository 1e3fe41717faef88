package cuda

import (
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
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
// element, relative to s = Σ_r |x_r| (times 1/n for the mean): fp32 1e-6 (n−1 fp32 roundings are
// ≤ (n−1)·6e-8); bf16 n·2⁻⁸ (each of the ≤ n roundings to bf16 of a partial sum, and of the 1/n
// pre-scaling of the mean, is off by at most 2⁻⁸ of its magnitude ≤ s). Every rank must hold the
// same bits (replicas of a model stay identical).
func TestNCCLAllReduce(t *testing.T) {
	c := gpuComm(t)
	r := seedRand(t)
	R := c.Size()
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		bound := 1e-6
		if dt == kernels.BF16 {
			bound = float64(R) / 256
		}
		for _, mean := range []bool{false, true} {
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
					e := math.Abs(float64(got[0][i])-want) / s
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
