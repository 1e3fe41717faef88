package main

import (
	"strings"
	"testing"
)

// The bench's check is only as good as its inputs: integers in [-8, 7] (sums of 8 ranks exact in
// fp32 and bf16), all 16 values used, and different on every rank at most elements (an all-reduce
// that dropped or doubled a rank's part would not match the host sum).
func TestAllReduceInput(t *testing.T) {
	const n = 10000
	seen := map[float32]bool{}
	for r := 0; r < 8; r++ {
		for i := 0; i < n; i++ {
			v := allReduceInput(r, i)
			if v != float32(int(v)) || v < -8 || v > 7 {
				t.Fatalf("rank %d element %d = %g: want an integer in [-8, 7]", r, i, v)
			}
			seen[v] = true
		}
	}
	if len(seen) != 16 {
		t.Fatalf("%d distinct values, want 16", len(seen))
	}
	for r := 1; r < 8; r++ {
		same := 0
		for i := 0; i < n; i++ {
			if allReduceInput(r, i) == allReduceInput(0, i) {
				same++
			}
		}
		if same > n/8 { // 1/16 by chance
			t.Errorf("rank %d equals rank 0 at %d of %d elements", r, same, n)
		}
	}
}

func TestBenchAllReduceFlags(t *testing.T) {
	for _, args := range [][]string{{"--dtype", "fp16"}, {"--devices", "0"}, {"--mib", "0"}} {
		benchAllReduceCmd.Flags().Set("dtype", "fp32")
		benchAllReduceCmd.Flags().Set("devices", "2")
		benchAllReduceCmd.Flags().Set("mib", "1")
		if err := benchAllReduceCmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		err := runBenchAllReduce(benchAllReduceCmd, nil)
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: error %v, want one naming %s", args, err, args[0])
		}
	}
}
