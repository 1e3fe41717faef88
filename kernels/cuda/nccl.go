package cuda

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/fewstep/fewstep/kernels"
)

// NCCL: collectives between GPUs. libnccl.so.2 is dlopened, like the driver and cuBLASLt, the first
// time a communicator is asked for; nothing is needed to build. Two kinds of communicator:
//   - Comm (this file): one process drives every GPU from one goroutine; ncclCommInitAll makes one
//     communicator per Device, and each collective is queued on every device's own stream between
//     ncclGroupStart and ncclGroupEnd on one locked OS thread (NCCL keeps the group state per
//     thread). `fewstep bench allreduce` uses it.
//   - RankComm (nccl_rank.go): one rank's communicator, a dist.Comm, for one goroutine per GPU; the
//     ranks may span several processes (ncclCommInitRank from a unique id). The trainer uses it.
//
// NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 is put in the environment before NCCL
// reads it, unless the user set it. A program using multicast can put a host's GPUs, which others
// share, out of service; nothing here calls cuMulticastCreate.

// ncclLibEnv names a full path to libnccl.so.2, tried before the loader path and the pip wheels.
const ncclLibEnv = "FEWSTEP_NCCL"

// nccl.h's enums (ncclDataType_t, ncclRedOp_t).
const (
	ncclFloat16  = 6
	ncclFloat32  = 7
	ncclBfloat16 = 9

	ncclSum = 0
	ncclAvg = 4
)

// ncclLib holds the NCCL entry points, resolved once.
type ncclLib struct {
	lib     uintptr
	path    string // what was opened
	version int    // ncclGetVersion: major·10000 + minor·100 + patch

	getVersion, getErrorString, getLastError, commInitAll, commDestroy, commCount, commCuDevice,
	commUserRank, groupStart, groupEnd, allReduce, broadcast uintptr

	// per-rank communicators (nccl_rank.go)
	getUniqueId, commInitRank, reduceScatter, allGather, commAbort, commGetAsyncError uintptr
	reduce                                                                            uintptr
}

var (
	ncclOnce sync.Once
	theNCCL  *ncclLib
	ncclErr  error
)

// ncclWheelDirs are where pip puts nvidia-nccl-cu13 / -cu12 (nvidia/nccl/lib; the CUDA 13 wheels
// of the other libraries use nvidia/cu13/lib, tried too), as globs.
var ncclWheelDirs = []string{
	"/usr/local/lib/python3*/dist-packages",
	"/usr/local/lib/python3*/site-packages",
	"/usr/lib/python3*/dist-packages",
	"/usr/lib/python3*/site-packages",
	"/opt/conda/lib/python3*/site-packages",
	"$VIRTUAL_ENV/lib/python3*/site-packages",
	"$CONDA_PREFIX/lib/python3*/site-packages",
	"$HOME/.local/lib/python3*/site-packages",
}

// ncclSearch lists the libraries to try, in order: $FEWSTEP_NCCL, the loader's libnccl.so.2, the
// matches of the pip wheel globs. misses are the globs that matched nothing (for the error).
func ncclSearch() (paths, misses []string) {
	if p := os.Getenv(ncclLibEnv); p != "" {
		paths = append(paths, p)
	}
	paths = append(paths, "libnccl.so.2")
	for _, dir := range ncclWheelDirs {
		if strings.Contains(dir, "$") {
			env := dir[1:strings.IndexByte(dir, '/')]
			if os.Getenv(env) == "" {
				continue
			}
			dir = os.ExpandEnv(dir)
		}
		for _, sub := range []string{"nvidia/nccl/lib", "nvidia/cu13/lib"} {
			pat := filepath.Join(dir, sub, "libnccl.so.2")
			m, _ := filepath.Glob(pat)
			sort.Sort(sort.Reverse(sort.StringSlice(m))) // python3.12 before python3.11
			if len(m) == 0 {
				misses = append(misses, pat)
			}
			for _, p := range m {
				if !slices.Contains(paths, p) {
					paths = append(paths, p)
				}
			}
		}
	}
	return paths, misses
}

// nvlsOff puts NCCL_NVLS_ENABLE=0 in the process environment unless it is set. With purego's
// runtime (CGO_ENABLED=0 too) os.Setenv reaches the C environment that NCCL's getenv reads.
func nvlsOff() {
	if _, ok := os.LookupEnv("NCCL_NVLS_ENABLE"); !ok {
		os.Setenv("NCCL_NVLS_ENABLE", "0")
	}
}

// loadNCCL opens NCCL once (ncclSearch's order).
func loadNCCL() (*ncclLib, error) {
	ncclOnce.Do(func() {
		if runtime.GOOS != "linux" {
			ncclErr = fmt.Errorf("no NCCL: it needs Linux (this is %s)", runtime.GOOS)
			return
		}
		nvlsOff() // before NCCL first reads its environment
		theNCCL, ncclErr = openNCCL(ncclSearch())
	})
	return theNCCL, ncclErr
}

// openNCCL opens the first of paths that loads and resolves every entry point. The error names
// each library tried and why it failed, and the wheel globs that matched nothing.
func openNCCL(paths, misses []string) (*ncclLib, error) {
	var tried []string
	for _, p := range paths {
		h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_LOCAL) // its symbols stay its own
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		n, err := ncclSymbols(h, p)
		if err != nil {
			tried = append(tried, err.Error())
			continue
		}
		var v int32
		if err := n.call("ncclGetVersion", n.getVersion, uintptr(unsafe.Pointer(&v))); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		n.version = int(v)
		return n, nil
	}
	msg := fmt.Sprintf("NCCL not found: tried %s", strings.Join(tried, "; "))
	if len(misses) > 0 {
		msg += fmt.Sprintf("; no match for %s", strings.Join(misses, ", "))
	}
	return nil, fmt.Errorf("%s (pip install nvidia-nccl-cu13, or set %s to libnccl.so.2's full path)", msg, ncclLibEnv)
}

func ncclSymbols(h uintptr, path string) (*ncclLib, error) {
	n := &ncclLib{lib: h, path: path}
	if miss := resolve(h, []dlsym{
		{&n.getVersion, "ncclGetVersion"}, {&n.getErrorString, "ncclGetErrorString"},
		{&n.getLastError, "ncclGetLastError"}, {&n.commInitAll, "ncclCommInitAll"},
		{&n.commDestroy, "ncclCommDestroy"}, {&n.commCount, "ncclCommCount"},
		{&n.commCuDevice, "ncclCommCuDevice"}, {&n.commUserRank, "ncclCommUserRank"},
		{&n.groupStart, "ncclGroupStart"}, {&n.groupEnd, "ncclGroupEnd"},
		{&n.allReduce, "ncclAllReduce"}, {&n.broadcast, "ncclBroadcast"},
		{&n.getUniqueId, "ncclGetUniqueId"}, {&n.commInitRank, "ncclCommInitRank"},
		{&n.reduceScatter, "ncclReduceScatter"}, {&n.allGather, "ncclAllGather"},
		{&n.commAbort, "ncclCommAbort"}, {&n.commGetAsyncError, "ncclCommGetAsyncError"},
		{&n.reduce, "ncclReduce"},
	}); miss != "" {
		return nil, fmt.Errorf("%s lacks %s (NCCL older than 2.13?)", path, miss)
	}
	return n, nil
}

// ncclError is a failed NCCL call: its name, the ncclResult_t, ncclGetErrorString's words for it
// and NCCL's last warning (ncclGetLastError), which usually says which argument.
type ncclError struct {
	Call string
	Code uintptr
	Msg  string
	Last string
}

func (e *ncclError) Error() string {
	s := fmt.Sprintf("nccl: %s failed: %s (%d)", e.Call, e.Msg, e.Code)
	if e.Last != "" {
		s += fmt.Sprintf(" [NCCL's last warning: %s]", strings.TrimSpace(e.Last))
	}
	return s
}

// check turns an ncclResult_t into an error naming the call.
func (n *ncclLib) check(call string, r uintptr) error {
	if r == 0 {
		return nil
	}
	e := &ncclError{Call: call, Code: r, Msg: "?"}
	if n.getErrorString != 0 {
		s, _, _ := purego.SyscallN(n.getErrorString, r)
		if s != 0 {
			e.Msg = cstring(s)
		}
	}
	if n.getLastError != 0 {
		s, _, _ := purego.SyscallN(n.getLastError, 0)
		e.Last = cstring(s)
	}
	return e
}

// call runs an NCCL entry point and checks its result. Marked like drv.call, for the same reason:
// callers pass addresses of locals (the communicators and counts NCCL writes back).
//
//go:uintptrescapes
func (n *ncclLib) call(name string, fn uintptr, args ...uintptr) error {
	r, _, _ := purego.SyscallN(fn, args...)
	return n.check(name, r&0xffffffff)
}

// NCCLVersion opens NCCL (if not yet) and returns its version ("2.27.7") and the library's path.
func NCCLVersion() (version, path string, err error) {
	n, err := loadNCCL()
	if err != nil {
		return "", "", err
	}
	return fmt.Sprintf("%d.%d.%d", n.version/10000, n.version/100%100, n.version%100), n.path, nil
}

// Comm is one NCCL communicator per Device of this process (rank i = devs[i]). Its collectives are
// queued on the devices' streams, ordered after their earlier ops and before their later ones, and
// return once queued: a device's Sync waits for them and reports a fault. Not safe for concurrent
// use, like the Devices.
type Comm struct {
	nc    *ncclLib
	devs  []*Device
	comms []uintptr // ncclComm_t, by rank
}

// NewComm makes the communicators of devs (distinct GPUs of this process; rank i is devs[i]).
func NewComm(devs []*Device) (*Comm, error) {
	if len(devs) == 0 {
		return nil, fmt.Errorf("nccl: NewComm of no devices")
	}
	list := make([]int32, len(devs))
	for i, d := range devs {
		if d == nil {
			return nil, fmt.Errorf("nccl: NewComm: device %d is nil", i)
		}
		for j := 0; j < i; j++ {
			if devs[j].Ordinal == d.Ordinal {
				return nil, fmt.Errorf("nccl: NewComm: GPU %d given twice (ranks %d and %d)", d.Ordinal, j, i)
			}
		}
		if d.err != nil {
			return nil, fmt.Errorf("nccl: NewComm: GPU %d has failed earlier: %w", d.Ordinal, d.err)
		}
		list[i] = int32(d.Ordinal)
	}
	nc, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	nvlsOff()
	return newComm(nc, devs, list)
}

// newComm is NewComm's part after the checks, on the library nc.
func newComm(nc *ncclLib, devs []*Device, list []int32) (*Comm, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := &Comm{nc: nc, devs: devs, comms: make([]uintptr, len(devs))}
	if err := nc.call(fmt.Sprintf("ncclCommInitAll(GPUs %v)", list), nc.commInitAll,
		uintptr(unsafe.Pointer(&c.comms[0])), uintptr(len(devs)), uintptr(unsafe.Pointer(&list[0]))); err != nil {
		return nil, err
	}
	// NCCL numbers GPUs as the CUDA runtime does, the devices as the driver does: the same order
	// (both follow CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER), checked here all the same.
	for i, cm := range c.comms {
		var dev, rank int32
		if err := nc.call("ncclCommCuDevice", nc.commCuDevice, cm, uintptr(unsafe.Pointer(&dev))); err != nil {
			c.Close()
			return nil, err
		}
		if err := nc.call("ncclCommUserRank", nc.commUserRank, cm, uintptr(unsafe.Pointer(&rank))); err != nil {
			c.Close()
			return nil, err
		}
		if int(dev) != devs[i].Ordinal || int(rank) != i {
			c.Close()
			return nil, fmt.Errorf("nccl: communicator %d is on CUDA device %d as rank %d, want GPU %d as rank %d", i, dev, rank, devs[i].Ordinal, i)
		}
	}
	return c, nil
}

// Size is the number of ranks (devices).
func (c *Comm) Size() int { return len(c.devs) }

// Devices are the communicator's devices, by rank.
func (c *Comm) Devices() []*Device { return c.devs }

// Version is NCCL's version, "2.27.7".
func (c *Comm) Version() string {
	v := c.nc.version
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}

// AllReduceSum replaces each ts[i] (on devs[i]; the same shape and dtype everywhere: fp32, bf16 or
// fp16) by the elementwise sum over all ranks, in place.
func (c *Comm) AllReduceSum(ts []*kernels.Tensor) error {
	return c.collective("ncclAllReduce(sum)", ts, -1, ncclSum)
}

// AllReduceMean is AllReduceSum divided by the number of ranks (ncclAvg: NCCL scales each input
// by 1/n before the sum).
func (c *Comm) AllReduceMean(ts []*kernels.Tensor) error {
	return c.collective("ncclAllReduce(avg)", ts, -1, ncclAvg)
}

// Broadcast copies ts[root] into every other ts[i], in place (replicating weights).
func (c *Comm) Broadcast(ts []*kernels.Tensor, root int) error {
	if root < 0 || root >= len(c.devs) {
		return fmt.Errorf("nccl: Broadcast root %d: want a rank in [0, %d)", root, len(c.devs))
	}
	return c.collective("ncclBroadcast", ts, root, 0)
}

// checkTensors validates one tensor per rank, on its rank's device, shapes and dtypes alike.
func (c *Comm) checkTensors(op string, ts []*kernels.Tensor) (dtype uintptr, err error) {
	if c.comms == nil {
		return 0, fmt.Errorf("nccl: %s on a closed communicator", op)
	}
	if len(ts) != len(c.devs) {
		return 0, fmt.Errorf("nccl: %s: %d tensors for %d devices (one per rank)", op, len(ts), len(c.devs))
	}
	for i, t := range ts {
		if t == nil {
			return 0, fmt.Errorf("nccl: %s: tensor %d is nil", op, i)
		}
		if g, ok := t.Dev.(*Device); !ok || g != c.devs[i] {
			return 0, fmt.Errorf("nccl: %s: tensor %d %v is not on rank %d's device (GPU %d)", op, i, t, i, c.devs[i].Ordinal)
		}
		if t.DType != ts[0].DType || !slices.Equal(t.Shape, ts[0].Shape) {
			return 0, fmt.Errorf("nccl: %s: tensor %d is %s %v, tensor 0 is %s %v: want the same shape and dtype on every rank", op, i, t.DType, t.Shape, ts[0].DType, ts[0].Shape)
		}
		if t.Numel() > 0 && t.Ptr == 0 {
			return 0, fmt.Errorf("nccl: %s: tensor %d %v has no device memory (freed, or its Alloc failed)", op, i, t)
		}
	}
	switch ts[0].DType {
	case kernels.F32:
		return ncclFloat32, nil
	case kernels.BF16:
		return ncclBfloat16, nil
	case kernels.F16:
		return ncclFloat16, nil
	}
	return 0, fmt.Errorf("nccl: %s: dtype %s not supported", op, ts[0].DType)
}

// collective queues op on every rank: all-reduce with redOp (root < 0) or broadcast from root.
func (c *Comm) collective(op string, ts []*kernels.Tensor, root int, redOp uintptr) error {
	dtype, err := c.checkTensors(op, ts)
	if err != nil {
		return err
	}
	count := ts[0].Numel()
	if count == 0 {
		return nil
	}
	runtime.LockOSThread() // the group, the current contexts: one OS thread from start to end
	defer runtime.UnlockOSThread()
	// The devices' own bookkeeping first: an earlier failure stops here; the bf16 copies of what
	// is about to be overwritten go stale (enterW, touch), as for any op that writes ts[i].
	for i, d := range c.devs {
		if d.capturing {
			return fmt.Errorf("nccl: %s during graph capture on GPU %d (not supported)", op, d.Ordinal)
		}
		ok := d.enterW(ts[i])
		if ok {
			d.touch(ts[i])
		}
		d.leave()
		if !ok {
			return fmt.Errorf("nccl: %s: GPU %d has failed earlier: %w", op, d.Ordinal, d.err)
		}
	}
	nc := c.nc
	if err := nc.call("ncclGroupStart", nc.groupStart); err != nil {
		return err
	}
	var first error
	for i, d := range c.devs {
		if err := d.drv.call("cuCtxSetCurrent", d.drv.cuCtxSetCurrent, d.ctx); err != nil {
			first = err
			break
		}
		p := ts[i].Ptr
		if root < 0 { // ncclAllReduce(send, recv, count, datatype, op, comm, stream)
			err = nc.call(fmt.Sprintf("%s(rank %d, %s %v)", op, i, ts[i].DType, ts[i].Shape), nc.allReduce,
				p, p, uintptr(count), dtype, redOp, c.comms[i], d.stream)
		} else { // ncclBroadcast(send, recv, count, datatype, root, comm, stream)
			err = nc.call(fmt.Sprintf("%s(rank %d, root %d, %s %v)", op, i, root, ts[i].DType, ts[i].Shape), nc.broadcast,
				p, p, uintptr(count), dtype, uintptr(root), c.comms[i], d.stream)
		}
		if err != nil {
			first = err
			break
		}
	}
	// The group is closed whatever happened in it (NCCL's group state is per thread).
	if err := nc.call("ncclGroupEnd("+op+")", nc.groupEnd); err != nil && first == nil {
		first = err
	}
	return first
}

// Close waits for the devices' queued work and destroys the communicators (not the devices).
func (c *Comm) Close() error {
	if c.comms == nil {
		return nil
	}
	var first error
	for _, d := range c.devs {
		if err := d.Sync(); err != nil && first == nil {
			first = err
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for i, cm := range c.comms {
		if cm == 0 {
			continue
		}
		if err := c.nc.call(fmt.Sprintf("ncclCommDestroy(rank %d)", i), c.nc.commDestroy, cm); err != nil && first == nil {
			first = err
		}
	}
	c.comms = nil
	return first
}
