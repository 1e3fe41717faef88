package trainer

import (
	"strings"
	"testing"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels/cuda"
)

// GPUOrdinals: CPU ranks have no GPUs (refused without asking the driver); a GPU list is this
// machine's GPUs, or, where there is no driver (CI), an error that starts with the list and says why.
func TestGPUOrdinals(t *testing.T) {
	cpu, _ := dist.ParseDevices("cpu:2")
	if _, err := GPUOrdinals(cpu); err == nil || !strings.Contains(err.Error(), `devices "cpu:2": CPU ranks have no GPUs`) {
		t.Errorf("cpu:2: %v", err)
	}
	spec, err := dist.ParseDevices("cuda:0,7")
	if err != nil {
		t.Fatal(err)
	}
	ords, err := GPUOrdinals(spec)
	count, cerr := cuda.DeviceCount()
	switch {
	case cerr != nil: // no driver: the driver's reason, after the list
		if err == nil || !strings.HasPrefix(err.Error(), `devices "cuda:0,7": `) || !strings.Contains(err.Error(), cerr.Error()) {
			t.Errorf("without a driver: %v, want devices \"cuda:0,7\": %v", err, cerr)
		}
	case count < 8:
		if err == nil || !strings.Contains(err.Error(), "GPU 7 does not exist") {
			t.Errorf("%d GPU(s): %v, %v, want GPU 7 refused", count, ords, err)
		}
	default:
		if err != nil || len(ords) != 2 || ords[0] != 0 || ords[1] != 7 {
			t.Errorf("%d GPUs: %v, %v, want [0 7]", count, ords, err)
		}
	}
}
