package trainer

import (
	"strings"
	"testing"
)

// TestDeviceNoiseRanksAndResume: with train.noise device (Philox on the device, here the CPU's
// RandnPhilox, which the GPU's matches: kernels/cuda/random_test.go) the training core keeps its
// promises: 2 ranks with batch 3 give the weights of one rank with batch 6 (dpTol, as
// TestDataParallelMatchesOneRank), and a run stopped after 2 of 4 steps and resumed ends bit for bit
// where the straight run ends. The device draws are in use: the weights differ from the host
// draws' (train.noise host) by far more than dpTol. A bad train.noise is refused by New.
func TestDeviceNoiseRanksAndResume(t *testing.T) {
	for _, obj := range []string{"dmd", "selfforcing"} {
		t.Run(obj, func(t *testing.T) {
			job := dpJob(obj, t.TempDir(), 4)
			job.Train.Noise = "device"
			init := initWeights(t, job)
			one := dpRun(t, job, 1, 6, nil)

			two := *job
			two.OutDir = t.TempDir()
			trs := dpRun(t, &two, 2, 6, nil)
			sameOnEveryRank(t, trs)
			for name, rel := range compareRoles(t, trs, one, init) {
				if !(rel <= dpTol) {
					t.Errorf("device noise, 2 ranks: role %s differs from one rank by %.3g of its move (tolerance %g)", name, rel, dpTol)
				}
			}

			host := *job
			host.OutDir, host.Train.Noise = t.TempDir(), "host"
			hostRun := dpRun(t, &host, 1, 6, nil)
			for name, rel := range compareRoles(t, hostRun, one, init) {
				if rel != 0 && !(rel > 100*dpTol) { // the frozen teacher: 0
					t.Errorf("role %s: device and host noise give weights only %.3g of its move apart: are the device draws used?", name, rel)
				}
			}

			resumed := dpResume(t, job, dpLeg(t, job, 2, 1, 6), 1, 6)
			for _, r := range one[0].roles {
				if !bitsEqual(hostW(one[0], r.Spec.Name), hostW(resumed[0], r.Spec.Name)) {
					t.Errorf("device noise, resumed at step 2: role %s is not the straight run's bit for bit", r.Spec.Name)
				}
			}
		})
	}
	job := dpJob("flowmatch", t.TempDir(), 1)
	job.Train.Noise = "gpu"
	if _, err := New(Options{Job: job}); err == nil || !strings.Contains(err.Error(), `train.noise: "gpu"`) {
		t.Errorf("train.noise gpu: %v, want an error naming train.noise", err)
	}
}
