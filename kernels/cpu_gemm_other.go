//go:build !amd64

package kernels

import "unsafe"

var useAVX2 = false

func kernel6x16(k int, a, b, c *float32, ldc int) {
	kernelGo(k, unsafe.Slice(a, k*gemmMR), unsafe.Slice(b, k*gemmNR), unsafe.Slice(c, 5*ldc+gemmNR), ldc)
}
