package cuda

import (
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
)

// The driver writes results (module handles, pointers) through addresses of the caller's locals,
// passed as uintptr through drv.call. If such a local stays on the goroutine stack and the stack
// grows on the way into C, the write lands in the old stack and the local keeps its old value —
// the cause of random CUDA_ERROR_INVALID_HANDLE from cuModuleGetFunction on a lost module handle.
// libc's sigfillset (returns 0, sets the bits of a sigset_t) stands in for the driver (no GPU
// needed): at every recursion depth, and so at every position of the stack limit relative to
// call's and SyscallN's frames, the write must land.
func TestCallWritesReachTheCallersLocals(t *testing.T) {
	h, err := purego.Dlopen("libc.so.6", purego.RTLD_NOW)
	if err != nil {
		t.Skipf("no libc.so.6 to stand in for the driver: %v", err)
	}
	fill, err := purego.Dlsym(h, "sigfillset")
	if err != nil {
		t.Skip(err)
	}
	d, b := &drv{}, &blasLt{}
	for depth := 0; depth < 3000; depth += 7 {
		done := make(chan [2]uint64)
		go func() { done <- callAtDepth(d, b, fill, depth) }()
		if got := <-done; got[0] == 0 || got[1] == 0 {
			t.Fatalf("at depth %d sigfillset through drv.call / blasLt.call left the locals at %#x / %#x, want signal bits set: a stack move lost the write", depth, got[0], got[1])
		}
	}
}

//go:noinline
func callAtDepth(d *drv, b *blasLt, fill uintptr, depth int) [2]uint64 {
	if depth > 0 {
		return callAtDepth(d, b, fill, depth-1)
	}
	var m, n [16]uint64 // sigset_t, written by "the driver"
	if err := d.call("sigfillset", fill, uintptr(unsafe.Pointer(&m))); err != nil {
		panic(err)
	}
	if err := b.call("sigfillset", fill, uintptr(unsafe.Pointer(&n))); err != nil {
		panic(err)
	}
	return [2]uint64{m[0], n[0]}
}
