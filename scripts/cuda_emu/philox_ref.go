//go:build ignore

// Prints what t_random.cpp's rand_normal_philox launch writes, from the Go reference
// (kernels.PhiloxRandn): run.sh diffs the two.
package main

import (
	"fmt"
	"math"

	"github.com/fewstep/fewstep/kernels"
)

func main() {
	const B, per = 3, 10
	for b := 0; b < B; b++ {
		z := make([]float32, per)
		kernels.PhiloxRandn(z, 0x0123456789abcdef*uint64(b+1), 0x00000007fffffffe)
		for i, v := range z {
			sep := " "
			if i == per-1 {
				sep = "\n"
			}
			fmt.Printf("%08x%s", math.Float32bits(v), sep)
		}
	}
}
