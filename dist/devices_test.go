package dist

import (
	"slices"
	"strings"
	"testing"
)

// TestDevices: the device list forms, resolving them on a node of 4 GPUs, and the errors: a GPU the
// node does not have, bad forms, and uneven shares.
func TestDevices(t *testing.T) {
	for _, tc := range []struct {
		in   string
		cpu  int   // CPU ranks
		gpus []int // resolved on 4 GPUs
		err  string
	}{
		{in: "cpu", cpu: 1},
		{in: "cpu:3", cpu: 3},
		{in: "all", gpus: []int{0, 1, 2, 3}},
		{in: "cuda:all", gpus: []int{0, 1, 2, 3}},
		{in: "cuda", gpus: []int{0}},
		{in: "cuda:2", gpus: []int{2}},
		{in: "cuda:0,1,2,3", gpus: []int{0, 1, 2, 3}},
		{in: "cuda:3,1", gpus: []int{3, 1}},
		{in: "cuda:0-2", gpus: []int{0, 1, 2}},
		{in: "2", gpus: []int{0, 1}},
		{in: "cuda:0,5", err: `devices "cuda:0,5": GPU 5 does not exist: this node has 4 GPU(s), 0-3`},
		{in: "cuda:4-6", err: "GPU 4, 5, 6 does not exist"},
		{in: "8", err: "GPU 4, 5, 6, 7 does not exist"},
		{in: "cpu:0", err: `"0" is not a number of CPU ranks`},
		{in: "cuda:1,1", err: "GPU 1 is listed twice"},
		{in: "cuda:a", err: `"a" is not a GPU ordinal`},
		{in: "cuda:3-1", err: `"3-1" is not a GPU ordinal or a range`},
		{in: "tpu", err: "unknown form"},
		{in: "0", err: "must be ≥ 1"},
	} {
		d, err := ParseDevices(tc.in)
		var gpus []int
		if err == nil && !d.CPU {
			gpus, err = d.Resolve(4)
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || (tc.cpu > 0) != d.CPU || d.CPU && d.N != tc.cpu || !slices.Equal(gpus, tc.gpus) {
			t.Errorf("%q: cpu %v×%d, GPUs %v, %v; want cpu×%d, GPUs %v", tc.in, d.CPU, d.N, gpus, err, tc.cpu, tc.gpus)
		}
	}
	if _, err := (Devices{All: true, Text: "all"}).Resolve(0); err == nil || !strings.Contains(err.Error(), "no GPU") {
		t.Errorf("all on a node without GPUs: %v", err)
	}
	if got, err := Share([]int{0, 1, 2, 3, 4, 5, 6, 7}, 1, 4); err != nil || !slices.Equal(got, []int{2, 3}) {
		t.Errorf("Share(8 GPUs, local rank 1 of 4) = %v, %v; want [2 3]", got, err)
	}
	if _, err := Share([]int{0, 1, 2}, 0, 2); err == nil || !strings.Contains(err.Error(), "3 devices do not split evenly over the 2 processes") {
		t.Errorf("Share(3 GPUs, 2 processes): %v", err)
	}
}
