package trainer

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
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
		// OpenRanks says the same for a plain GPU run and for GPU ranks.
		for _, o := range []LaunchOptions{{Devices: "cuda"}, {Devices: "cuda:1", Ranked: true}, {Devices: "all"}} {
			o.Env = dist.EnvMap(nil)
			if _, err := OpenRanks(o); err == nil || !strings.HasPrefix(err.Error(), `devices "`+o.Devices+`": `) || !strings.Contains(err.Error(), cerr.Error()) {
				t.Errorf("OpenRanks %s without a driver: %v", o.Devices, err)
			}
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

// OpenRanks on the CPU: a plain single device, one rank through a communicator (--devices given),
// N CPU ranks in this process, and the errors: a bad list, an unknown launcher, CPU ranks under a
// launcher that says several processes. Run calls f once per rank with its device and
// communicator and returns a rank's error; Close without a session is nil.
func TestOpenRanksCPU(t *testing.T) {
	none := dist.EnvMap(nil)
	for _, c := range []struct {
		devices string
		ranked  bool
		n       int
		comms   bool
		str     string
	}{
		{"cpu", false, 1, false, "1 rank(s) here (cpu), no communicator"},
		{"cpu", true, 1, true, "1 rank(s) here (cpu), global ranks 0-0 of 1"},
		{"cpu:1", false, 1, false, "1 rank(s) here (cpu), no communicator"},
		{"cpu:3", false, 3, true, "3 rank(s) here (cpu, cpu, cpu), global ranks 0-2 of 3"},
	} {
		r, err := OpenRanks(LaunchOptions{Devices: c.devices, Ranked: c.ranked, Env: none})
		if err != nil {
			t.Fatalf("%s (ranked %v): %v", c.devices, c.ranked, err)
		}
		if len(r.Devs) != c.n || (r.Comms != nil) != c.comms || r.World != c.n || r.First != 0 || !r.Lead() || r.String() != c.str {
			t.Errorf("%s (ranked %v): %d devices, comms %v, world %d, first %d, %q; want %d, %v, %d, 0, %q",
				c.devices, c.ranked, len(r.Devs), r.Comms != nil, r.World, r.First, r.String(), c.n, c.comms, c.n, c.str)
		}
		if c.comms && len(r.Comms) != c.n {
			t.Errorf("%s: %d communicators for %d ranks", c.devices, len(r.Comms), c.n)
		}
		var mu sync.Mutex
		seen := map[int]kernels.Device{}
		err = r.Run(func(i int, dev kernels.Device, cm dist.Comm) error {
			if (cm != nil) != c.comms || cm != nil && (cm.Rank() != i || cm.Size() != c.n) {
				return errors.New("wrong communicator")
			}
			mu.Lock()
			seen[i] = dev
			mu.Unlock()
			if i == c.n-1 {
				return errors.New("last rank fails")
			}
			return nil
		})
		if err == nil || !strings.Contains(err.Error(), "last rank fails") || len(seen) != c.n {
			t.Errorf("%s: Run: %v over %d ranks, want the last rank's error after all %d ran", c.devices, err, len(seen), c.n)
		}
		for i, d := range seen {
			if d != r.Devs[i] {
				t.Errorf("%s: rank %d ran on another device than Devs[%d]", c.devices, i, i)
			}
		}
		if err := r.Close(); err != nil {
			t.Errorf("%s: Close: %v", c.devices, err)
		}
	}
	torchrun := dist.EnvMap(map[string]string{"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
		"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
	for _, c := range []struct {
		o    LaunchOptions
		want string
	}{
		{LaunchOptions{Devices: "cpu:0", Env: none}, `devices "cpu:0"`},
		{LaunchOptions{Devices: "cpu", Launcher: "nope", Env: none}, "nope"},
		{LaunchOptions{Devices: "cpu:2", Env: torchrun}, `devices "cpu:2": CPU ranks run in one process, but the torchrun environment says 2 processes`},
		{LaunchOptions{Devices: "cpu", Ranked: true, Env: torchrun}, "CPU ranks run in one process"},
	} {
		if _, err := OpenRanks(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.o.Devices, err, c.want)
		}
	}
}

// JobHash, what the rendezvous compares between processes: the same for the same job whatever its
// device list (nodes may differ in GPUs), different when any other key differs.
func TestJobHash(t *testing.T) {
	a := config.Defaults()
	b := a
	b.Device = "cuda:0,1"
	c := a
	c.Train.Steps++
	ha, err1 := JobHash(&a)
	hb, err2 := JobHash(&b)
	hc, err3 := JobHash(&c)
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	if ha != hb || ha == hc || ha == "" {
		t.Errorf("hashes %q (job), %q (other devices), %q (other steps): want the first two equal, the third not", ha, hb, hc)
	}
	if a.Device != config.Defaults().Device {
		t.Errorf("JobHash changed the job's device to %q", a.Device)
	}
}
