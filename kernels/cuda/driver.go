// Package cuda is the GPU backend of the engine: a run-time binding to the CUDA driver API and
// cuBLASLt (dlopen through purego, no headers or libraries at build time, CGO_ENABLED=0 works),
// the kernels of kernels/cuda/*.cu (built by scripts/build-kernels.sh, embedded as fatbins), and a
// kernels.Device built on them.
package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// MinDriver is the oldest driver the embedded artifacts run on: they are built by nvcc 13.0, whose
// cubins and PTX need a CUDA 13 driver (≥ 580).
const MinDriver = 13000

// drv holds the driver entry points, resolved once.
type drv struct {
	lib uintptr

	cuInit, cuDriverGetVersion, cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute,
	cuDeviceTotalMem, cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRelease, cuCtxSetCurrent, cuCtxSynchronize,
	cuMemAlloc, cuMemFree, cuMemAllocHost, cuMemFreeHost, cuMemGetInfo,
	cuMemcpyHtoDAsync, cuMemcpyDtoHAsync, cuMemcpyDtoDAsync, cuMemsetD8Async, cuMemsetD32Async,
	cuStreamCreate, cuStreamDestroy, cuStreamSynchronize,
	cuEventCreate, cuEventDestroy, cuEventRecord, cuEventSynchronize, cuEventElapsedTime, cuEventQuery, cuStreamWaitEvent,
	cuModuleLoadData, cuModuleUnload, cuModuleGetFunction, cuFuncSetAttribute, cuLaunchKernel,
	cuOccupancyMaxActiveBlocksPerMultiprocessor,
	cuStreamBeginCapture, cuStreamEndCapture, cuGraphInstantiateWithFlags, cuGraphLaunch,
	cuGraphExecDestroy, cuGraphDestroy, cuGetErrorName, cuGetErrorString uintptr
}

var (
	drvOnce sync.Once
	theDrv  *drv
	drvErr  error
)

// dlopenFirst opens the first library of names that loads.
func dlopenFirst(names ...string) (uintptr, string, error) {
	var errs []string
	for _, n := range names {
		h, err := purego.Dlopen(n, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err == nil {
			return h, n, nil
		}
		errs = append(errs, err.Error())
	}
	return 0, "", fmt.Errorf("%v", errs)
}

// dlsym is one entry point of a dlopened library and where its address goes.
type dlsym struct {
	p    *uintptr
	name string
}

// resolve looks up every symbol of syms in library h; it returns the name of the first one
// missing, or "" when all resolved.
func resolve(h uintptr, syms []dlsym) string {
	for _, s := range syms {
		p, err := purego.Dlsym(h, s.name)
		if err != nil || p == 0 {
			return s.name
		}
		*s.p = p
	}
	return ""
}

// loadDriver dlopens libcuda.so.1 and resolves every entry point the backend uses.
func loadDriver() (*drv, error) {
	drvOnce.Do(func() {
		if runtime.GOOS != "linux" {
			drvErr = fmt.Errorf("no CUDA driver: the cuda device needs Linux (this is %s)", runtime.GOOS)
			return
		}
		h, _, err := dlopenFirst("libcuda.so.1", "libcuda.so")
		if err != nil {
			drvErr = fmt.Errorf("no CUDA driver: libcuda.so.1 not found (%v)", err)
			return
		}
		d := &drv{lib: h}
		syms := []struct {
			p     *uintptr
			names []string // first that resolves wins
		}{
			{&d.cuInit, []string{"cuInit"}},
			{&d.cuDriverGetVersion, []string{"cuDriverGetVersion"}},
			{&d.cuDeviceGetCount, []string{"cuDeviceGetCount"}},
			{&d.cuDeviceGet, []string{"cuDeviceGet"}},
			{&d.cuDeviceGetName, []string{"cuDeviceGetName"}},
			{&d.cuDeviceGetAttribute, []string{"cuDeviceGetAttribute"}},
			{&d.cuDeviceTotalMem, []string{"cuDeviceTotalMem_v2"}},
			{&d.cuDevicePrimaryCtxRetain, []string{"cuDevicePrimaryCtxRetain"}},
			{&d.cuDevicePrimaryCtxRelease, []string{"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"}},
			{&d.cuCtxSetCurrent, []string{"cuCtxSetCurrent"}},
			{&d.cuCtxSynchronize, []string{"cuCtxSynchronize"}},
			{&d.cuMemAlloc, []string{"cuMemAlloc_v2"}},
			{&d.cuMemFree, []string{"cuMemFree_v2"}},
			{&d.cuMemAllocHost, []string{"cuMemAllocHost_v2"}},
			{&d.cuMemFreeHost, []string{"cuMemFreeHost"}},
			{&d.cuMemGetInfo, []string{"cuMemGetInfo_v2"}},
			{&d.cuMemcpyHtoDAsync, []string{"cuMemcpyHtoDAsync_v2"}},
			{&d.cuMemcpyDtoHAsync, []string{"cuMemcpyDtoHAsync_v2"}},
			{&d.cuMemcpyDtoDAsync, []string{"cuMemcpyDtoDAsync_v2"}},
			{&d.cuMemsetD8Async, []string{"cuMemsetD8Async"}},
			{&d.cuMemsetD32Async, []string{"cuMemsetD32Async"}},
			{&d.cuStreamCreate, []string{"cuStreamCreate"}},
			{&d.cuStreamDestroy, []string{"cuStreamDestroy_v2"}},
			{&d.cuStreamSynchronize, []string{"cuStreamSynchronize"}},
			{&d.cuEventCreate, []string{"cuEventCreate"}},
			{&d.cuEventDestroy, []string{"cuEventDestroy_v2"}},
			{&d.cuEventRecord, []string{"cuEventRecord"}},
			{&d.cuEventSynchronize, []string{"cuEventSynchronize"}},
			{&d.cuEventElapsedTime, []string{"cuEventElapsedTime_v2", "cuEventElapsedTime"}},
			{&d.cuEventQuery, []string{"cuEventQuery"}},
			{&d.cuStreamWaitEvent, []string{"cuStreamWaitEvent"}},
			{&d.cuModuleLoadData, []string{"cuModuleLoadData"}},
			{&d.cuModuleUnload, []string{"cuModuleUnload"}},
			{&d.cuModuleGetFunction, []string{"cuModuleGetFunction"}},
			{&d.cuFuncSetAttribute, []string{"cuFuncSetAttribute"}},
			{&d.cuLaunchKernel, []string{"cuLaunchKernel"}},
			{&d.cuOccupancyMaxActiveBlocksPerMultiprocessor, []string{"cuOccupancyMaxActiveBlocksPerMultiprocessor"}},
			{&d.cuStreamBeginCapture, []string{"cuStreamBeginCapture_v2"}},
			{&d.cuStreamEndCapture, []string{"cuStreamEndCapture"}},
			{&d.cuGraphInstantiateWithFlags, []string{"cuGraphInstantiateWithFlags"}},
			{&d.cuGraphLaunch, []string{"cuGraphLaunch"}},
			{&d.cuGraphExecDestroy, []string{"cuGraphExecDestroy"}},
			{&d.cuGraphDestroy, []string{"cuGraphDestroy"}},
			{&d.cuGetErrorName, []string{"cuGetErrorName"}},
			{&d.cuGetErrorString, []string{"cuGetErrorString"}},
		}
		for _, s := range syms {
			for _, n := range s.names {
				if p, err := purego.Dlsym(h, n); err == nil && p != 0 {
					*s.p = p
					break
				}
			}
			if *s.p == 0 {
				drvErr = fmt.Errorf("CUDA driver too old: libcuda.so.1 lacks %s (need a CUDA 13 driver, ≥ 580)", s.names[0])
				return
			}
		}
		theDrv = d
	})
	return theDrv, drvErr
}

// cuError is a failed driver call: the call's name, the CUresult and the driver's words for it.
type cuError struct {
	Call string
	Code uintptr
	Name string
	Msg  string
}

func (e *cuError) Error() string {
	return fmt.Sprintf("cuda: %s failed: %s (%d): %s", e.Call, e.Name, e.Code, e.Msg)
}

// ErrOutOfMemory is wrapped by allocation failures.
var ErrOutOfMemory = errors.New("out of device memory")

// check turns a CUresult into an error naming the call.
func (d *drv) check(call string, r uintptr) error {
	if r == 0 {
		return nil
	}
	e := &cuError{Call: call, Code: r, Name: "?", Msg: "?"}
	var s uintptr
	if d.cuGetErrorName != 0 {
		if q, _, _ := purego.SyscallN(d.cuGetErrorName, r, uintptr(unsafe.Pointer(&s))); q == 0 && s != 0 {
			e.Name = cstring(s)
		}
		s = 0
		if q, _, _ := purego.SyscallN(d.cuGetErrorString, r, uintptr(unsafe.Pointer(&s))); q == 0 && s != 0 {
			e.Msg = cstring(s)
		}
	}
	if r == 2 { // CUDA_ERROR_OUT_OF_MEMORY
		return fmt.Errorf("%w: %w", ErrOutOfMemory, e)
	}
	return e
}

// call runs a driver entry point and checks its result.
//
// Callers pass pointers as uintptr(unsafe.Pointer(&local)). Go honours that conversion (keeps the
// object alive and where it is) only in calls to functions marked go:uintptrescapes, such as
// purego.SyscallN; call must carry the mark itself. Without it a local stayed on the goroutine
// stack, a stack growth on the way into the driver moved it, and the driver wrote to the old
// stack: cuModuleLoadData's module handle was lost at random, and a later cuModuleGetFunction on
// that module failed with CUDA_ERROR_INVALID_HANDLE (seen on H200s, sessions 1-3).
//
//go:uintptrescapes
func (d *drv) call(name string, fn uintptr, args ...uintptr) error {
	r, _, _ := purego.SyscallN(fn, args...)
	return d.check(name, r&0xffffffff)
}

// cstring copies a NUL-terminated C string.
func cstring(p uintptr) string {
	if p == 0 {
		return ""
	}
	var b []byte
	for i := uintptr(0); i < 4096; i++ {
		c := *(*byte)(cptr(p + i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}

// cptr turns the address of C memory (never Go memory) into a pointer without vet's complaint.
func cptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// Device attributes used here (CUdevice_attribute).
const (
	attrMultiprocessors  = 16
	attrCCMajor          = 75
	attrCCMinor          = 76
	attrMaxSharedOptin   = 97
	funcAttrMaxDynShared = 8 // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
	streamNonBlocking    = 1
	captureModeThreadLoc = 1 // CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
)
