package main

import (
	"fmt"
	"maps"
	"time"

	"github.com/spf13/cobra"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/trainer"
)

// Launch flags of `fewstep train` and `fewstep demo` (trainer/launch.go, docs/multi-gpu.md).

// launchFlags are --devices, --launcher and --rdzv-timeout.
type launchFlags struct {
	devices  string
	launcher string
	timeout  time.Duration
	takeOver bool // --take-over: take the run folder's stale lock (trainer.LockRun)
}

func addLaunchFlags(c *cobra.Command) {
	f := c.Flags()
	f.String("devices", "", "the ranks this node drives, one goroutine each: all | cuda:0,1,2,3 | N (GPUs 0..N-1) | cpu:N (N CPU ranks); overrides device: (default: the job's device)")
	f.String("launcher", "auto", "whose environment places this process in a multi-node job: auto | none | torchrun | slurm | mpi")
	f.Duration("rdzv-timeout", 5*time.Minute, "how long process 0 waits for the other processes at the rendezvous (they retry as long)")
	f.Bool("take-over", false, "take over the run folder's stale lock (run.lock) left by a job that was killed or ran on another host")
}

func getLaunchFlags(c *cobra.Command) (launchFlags, error) {
	f := c.Flags()
	var lf launchFlags
	lf.devices, _ = f.GetString("devices")
	lf.launcher, _ = f.GetString("launcher")
	lf.timeout, _ = f.GetDuration("rdzv-timeout")
	lf.takeOver, _ = f.GetBool("take-over")
	if lf.devices != "" {
		if d, _ := f.GetString("device"); d != "" {
			return lf, fmt.Errorf("--device %q and --devices %q: give one", d, lf.devices)
		}
		if _, err := dist.ParseDevices(lf.devices); err != nil {
			return lf, fmt.Errorf("--devices: %w", err)
		}
	}
	if lf.timeout <= 0 {
		return lf, fmt.Errorf("--rdzv-timeout %s: want a positive duration", lf.timeout)
	}
	return lf, nil
}

// launchOptions are the trainer's launch options for job under lf: --devices runs through a
// communicator even on one device; the job's device: does when it names several.
func (lf launchFlags) options(job *config.Job) trainer.LaunchOptions {
	o := trainer.LaunchOptions{Devices: job.Device, Launcher: lf.launcher, Timeout: lf.timeout, Job: job}
	if lf.devices != "" {
		o.Devices, o.Ranked = lf.devices, true
	}
	return o
}

// cloneJob is a copy of job that a rank may change (data.path) without touching the others'.
func cloneJob(job *config.Job) *config.Job {
	j := *job
	j.Params = maps.Clone(job.Params)
	j.Roles = maps.Clone(job.Roles)
	return &j
}
