package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/trainer"
)

// `fewstep bench allreduce`: NCCL's in-place all-reduce (sum) between the GPUs of this process,
// reported as nccl-tests does: algbw = bytes/time, busbw = algbw·2(n−1)/n.

var benchAllReduceCmd = &cobra.Command{
	Use:   "allreduce",
	Short: "Time NCCL's all-reduce between this machine's GPUs: algorithm and bus bandwidth",
	Long: `One process drives GPUs 0..N-1 through one NCCL communicator each (kernels/cuda.Comm) and
all-reduces (sums) --mib MiB per GPU in place. The first all-reduce is checked against the sum
computed on the host, element by element on every GPU (the inputs are small integers, so the sum
is exact in fp32 and bf16); then --warmup untimed and --iters timed all-reduces run back to back
and the mean time gives algbw = bytes/time and busbw = algbw·2(N−1)/N (GB/s, 1e9 bytes, as
nccl-tests). NVLink multicast stays off (NCCL_NVLS_ENABLE=0 unless set). libnccl.so.2 is found on
the loader path, in pip's nvidia-nccl-cu13 wheel, or at $FEWSTEP_NCCL.`,
	Example: `  fewstep bench allreduce --devices 2 --mib 1024
  fewstep bench allreduce --devices 8 --mib 256 --dtype bf16`,
	RunE: runBenchAllReduce,
}

func init() {
	f := benchAllReduceCmd.Flags()
	f.String("devices", "2", "the GPUs: all | cuda:0,1,2,3 | N (GPUs 0..N-1), as everywhere")
	f.Int("mib", 1024, "MiB all-reduced per GPU")
	f.String("dtype", "fp32", "element type: fp32 or bf16")
	f.Int("iters", 20, "timed all-reduces (their mean time is reported)")
	f.Int("warmup", 5, "untimed all-reduces first")
	benchCmd.AddCommand(benchAllReduceCmd)
}

// allReduceInput is rank r's element i: an integer in [-8, 7] from a hash, so every sum of up to
// 8 ranks is exact in fp32 and bf16.
func allReduceInput(r, i int) float32 {
	h := uint32(i)*2654435761 ^ uint32(r+1)*2246822519
	h ^= h >> 15
	h *= 2246822519
	return float32(int(h>>28) - 8)
}

func runBenchAllReduce(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	devices, _ := fl.GetString("devices")
	mib, _ := fl.GetInt("mib")
	dts, _ := fl.GetString("dtype")
	iters, _ := fl.GetInt("iters")
	warm, _ := fl.GetInt("warmup")
	dt, err := benchDType(dts)
	if err != nil {
		return err
	}
	if mib < 1 || iters < 1 || warm < 0 {
		return fmt.Errorf("--mib %d, --iters %d, --warmup %d: want --mib ≥ 1, --iters ≥ 1, --warmup ≥ 0", mib, iters, warm)
	}
	ords, err := benchGPUs(devices, "bench allreduce")
	if err != nil {
		return err
	}
	n := len(ords)
	if n > 8 {
		return fmt.Errorf("--devices %q: %d GPUs, want 1 to 8", devices, n)
	}
	count := (mib << 20) / dt.Size()
	bytes := count * dt.Size()

	devs := make([]*cuda.Device, n)
	info := make([]string, n)
	for i := range devs {
		d, err := cuda.New(ords[i])
		if err != nil {
			return fmt.Errorf("--devices %q: GPU %d: %w", devices, ords[i], err)
		}
		devs[i], info[i] = d, d.Info
	}
	c, err := cuda.NewComm(devs)
	if err != nil {
		return err
	}
	defer c.Close()
	ts := make([]*kernels.Tensor, n)
	host := make([]float32, count)
	want := make([]float32, count) // the host's sum
	for r, d := range devs {
		for i := range host {
			host[i] = allReduceInput(r, i)
			want[i] += host[i]
		}
		ts[r] = d.Alloc(dt, count)
		d.FromHost(ts[r], host) // staged before it returns: host is free to reuse
		if err := d.Sync(); err != nil {
			return fmt.Errorf("GPU %d: %w", r, err)
		}
	}
	syncAll := func() error {
		for r, d := range devs {
			if err := d.Sync(); err != nil {
				return fmt.Errorf("GPU %d: %w", r, err)
			}
		}
		return nil
	}

	// The first all-reduce, checked on every rank against the host's sum.
	if err := c.AllReduceSum(ts); err != nil {
		return err
	}
	if err := syncAll(); err != nil {
		return err
	}
	for r, d := range devs {
		d.ToHost(host, ts[r])
		if err := d.Sync(); err != nil {
			return fmt.Errorf("GPU %d: %w", r, err)
		}
		bad, first := 0, -1
		for i, got := range host {
			if got != want[i] {
				if first < 0 {
					first = i
				}
				bad++
			}
		}
		if bad > 0 {
			return fmt.Errorf("all-reduce WRONG on GPU %d: %d of %d elements differ from the host sum (first: element %d = %g, want %g)", r, bad, count, first, host[first], want[first])
		}
	}

	// Timed: the sums grow by N per all-reduce from here (the check is done); the time does not
	// depend on the values.
	for i := 0; i < warm; i++ {
		if err := c.AllReduceSum(ts); err != nil {
			return err
		}
	}
	if err := syncAll(); err != nil {
		return err
	}
	t0 := time.Now()
	for i := 0; i < iters; i++ {
		if err := c.AllReduceSum(ts); err != nil {
			return err
		}
	}
	if err := syncAll(); err != nil {
		return err
	}
	sec := time.Since(t0).Seconds() / float64(iters)
	algbw := float64(bytes) / sec / 1e9
	busbw := algbw * 2 * float64(n-1) / float64(n)
	for r, d := range devs {
		d.Free(ts[r])
	}
	ver, lib, _ := cuda.NCCLVersion()
	nvls, set := os.LookupEnv("NCCL_NVLS_ENABLE")
	if !set {
		nvls = "(unset)"
	}
	res := map[string]any{"bench": "allreduce", "devices": n, "gpus": info, "nccl": ver, "nccl_lib": lib,
		"NCCL_NVLS_ENABLE": nvls, "dtype": dts, "op": "sum, in place", "bytes": bytes, "count": count,
		"iters": iters, "warmup": warm, "time_ms": sec * 1e3, "algbw_GBps": algbw, "busbw_GBps": busbw,
		"check": "first all-reduce equal to the host sum on every GPU, every element",
		"note":  "mean wall time of back-to-back all-reduces between device syncs; GB = 1e9 bytes; busbw = algbw·2(n−1)/n (nccl-tests)"}
	return benchReport(cmd, res)
}

// benchGPUs resolves a benchmark's --devices list to GPU ordinals of this machine; cmd names the
// benchmark in the error for a CPU list.
func benchGPUs(devices, cmd string) ([]int, error) {
	spec, err := dist.ParseDevices(devices)
	if err != nil {
		return nil, fmt.Errorf("--devices: %w", err)
	}
	if spec.CPU {
		return nil, fmt.Errorf("--devices %q: %s times GPUs", devices, cmd)
	}
	return trainer.GPUOrdinals(spec)
}
