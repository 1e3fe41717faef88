package kernels

import (
	"os"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// useAVX2 selects the assembly kernels (GEMM micro-kernel, softmax exp/max, GELU). FEWSTEP_NOASM=1
// turns them off, e.g. to run the test suite on the portable Go paths.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA && os.Getenv("FEWSTEP_NOASM") == ""

//go:noescape
func kernel6x16AVX2(k int, a, b, c *float32, ldc int)

// kernel6x16: C[6,16] (row stride ldc) += packed A [k][6] · packed B [k][16].
func kernel6x16(k int, a, b, c *float32, ldc int) {
	if useAVX2 {
		kernel6x16AVX2(k, a, b, c, ldc)
		return
	}
	kernelGo(k, unsafe.Slice(a, k*gemmMR), unsafe.Slice(b, k*gemmNR), unsafe.Slice(c, 5*ldc+gemmNR), ldc)
}
