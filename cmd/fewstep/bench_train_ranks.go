package main

// fewstep bench train --devices LIST: one objective's trainer step on every GPU of the list, one
// goroutine and stream per GPU, data parallel through NCCL (trainer/launch.go's ranks), timed as
// the wall time of a step of all ranks; with several GPUs the one-GPU step is measured first, in a
// child process, for the scaling (weak scaling: --batch is per GPU).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/trainer"
)

// benchTrainRanks times obj's step on the GPUs of devices (--devices) and adds it to res.
func benchTrainRanks(cmd *cobra.Command, res map[string]any, obj string, cfg models.Config, s models.Shape, L int) error {
	fl := cmd.Flags()
	devices, _ := fl.GetString("devices")
	shard, _ := fl.GetString("shard")
	scaling, _ := fl.GetBool("scaling")
	iters, _ := fl.GetInt("iters")
	warm, _ := fl.GetInt("warmup")
	gm, _ := fl.GetString("gemm")
	ords, err := benchGPUs(devices, "bench train")
	if err != nil {
		return err
	}
	n := len(ords)
	res["devices"], res["world"], res["shard"] = ords, n, shard
	// The one-GPU step first, in its own process, before this one holds GPU memory.
	if n > 1 && scaling {
		one, err := benchOneGPU(ords[0])
		if err != nil {
			res["one_gpu_error"] = err.Error()
			fmt.Fprintf(os.Stderr, "bench train: the one-GPU step: %v\n", err)
		} else {
			res["one_gpu"] = one
		}
	}
	gs := make([]*cuda.Device, n)
	for i, o := range ords {
		if gs[i], err = cuda.New(o); err != nil {
			return fmt.Errorf("--devices %q: GPU %d: %w", devices, o, err)
		}
		trainer.UseGPUDefaults(gs[i])
	}
	res["device"] = gs[0].Info
	rcs, err := cuda.NewLocalRanks(gs, cuda.RankOptions{Timeout: 5 * time.Minute})
	if err != nil {
		return err
	}
	if v, _, err := cuda.NCCLVersion(); err == nil {
		res["nccl"] = v
	}
	B, F, H, W := s.B, s.F, s.H, s.W
	ht, hx := benchBatch(B*L*cfg.TextDim, B*cfg.InDim*F*H*W)
	// One goroutine per rank: build its trainer, then one step per tick, synchronized.
	type result struct {
		rank int
		m    map[string]float64
		err  error
	}
	tick := make([]chan bool, n) // true: a step; closed: done
	out := make(chan result, n)
	for i := range rcs {
		tick[i] = make(chan bool)
		go func(i int) {
			g, c := gs[i], rcs[i]
			job := benchJob(obj, gm == "bf16")
			job.Train.Shard = shard
			tr, err := trainer.New(trainer.Options{Job: &job, Dev: g, Model: cfg, Shape: s,
				Null: make([]float32, L*cfg.TextDim), RandomInit: true, Comm: c,
				Source: benchSource{&trainer.HostBatch{X0: hx, Ctx: ht, Drop: make([]bool, B)}}})
			if err == nil {
				err = g.Sync()
			}
			if err != nil {
				c.Abort(fmt.Errorf("rank %d failed to build its roles: %w", i, err))
			}
			out <- result{i, nil, err}
			for range tick[i] {
				var m map[string]float64
				if err == nil {
					m, err = tr.TrainStep()
				}
				if err == nil {
					err = g.Sync()
				}
				if err != nil {
					c.Abort(fmt.Errorf("rank %d failed: %w", i, err))
				}
				out <- result{i, m, err}
			}
		}(i)
	}
	defer func() {
		for _, t := range tick {
			close(t)
		}
	}()
	collect := func(what string) ([]map[string]float64, error) {
		ms := make([]map[string]float64, n)
		var first error
		for range rcs {
			x := <-out
			ms[x.rank] = x.m
			if x.err != nil && first == nil {
				first = fmt.Errorf("%s: rank %d: %w", what, x.rank, x.err)
			}
		}
		return ms, first
	}
	if _, err := collect("building the roles"); err != nil {
		res["error"] = err.Error()
		benchReport(cmd, res)
		return err
	}
	used := func() []float64 {
		var u []float64
		for _, g := range gs {
			f, t, _ := g.MemInfo()
			u = append(u, float64(t-f)/(1<<30))
		}
		return u
	}
	res["mem_setup_GiB_per_gpu"] = used()
	var times []float64
	var metrics []map[string]float64
	for k := 0; k < warm+iters; k++ {
		t0 := time.Now()
		for _, t := range tick {
			t <- true
		}
		ms, err := collect(fmt.Sprintf("step %d", k+1))
		if err != nil {
			res["error"] = err.Error()
			benchReport(cmd, res)
			return err
		}
		metrics = append(metrics, ms[0])
		if k >= warm {
			times = append(times, float64(time.Since(t0).Microseconds())/1e3)
		}
	}
	sort.Float64s(times)
	ms := times[len(times)/2]
	res["step_ms"] = ms
	res["step_wall_ms_sorted"] = times
	res["samples_per_s"] = float64(n*B) / (ms / 1e3)
	res["metrics_by_step"] = jsonMetrics(metrics) // rank 0's (averaged over ranks), warm-up steps first
	res["mem_used_GiB_per_gpu"] = used()
	if one, ok := res["one_gpu"].(map[string]any); ok {
		if oms, ok := one["step_ms"].(float64); ok {
			res["one_gpu_step_ms"] = oms
			res["scaling_efficiency"] = oms / ms // weak scaling: 1 is perfect
			res["speedup"] = float64(n) * oms / ms
		}
	}
	return benchReport(cmd, res)
}

// benchOneGPU runs this command again on GPU ord alone (no scaling) and returns its JSON.
func benchOneGPU(ord int) (map[string]any, error) {
	var args []string
	for i := 1; i < len(os.Args); i++ {
		a := os.Args[i]
		switch {
		case a == "--devices":
			i++
			continue
		case strings.HasPrefix(a, "--devices="), strings.HasPrefix(a, "--scaling"):
			continue
		}
		args = append(args, a)
	}
	args = append(args, "--devices", fmt.Sprintf("cuda:%d", ord), "--scaling=false", "--json") // its result as a JSON line
	c := exec.Command(os.Args[0], args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		tail := stderr.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return nil, fmt.Errorf("%s %s: %w\n%s", os.Args[0], strings.Join(args, " "), err, tail)
	}
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	var last map[string]any
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "{") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil {
				last = m
			}
		}
	}
	if last == nil {
		return nil, fmt.Errorf("the one-GPU run printed no JSON line")
	}
	return last, nil
}

// jsonMetrics is ms with non-finite values as strings ("NaN", "+Inf"), which JSON cannot hold.
func jsonMetrics(ms []map[string]float64) []map[string]any {
	out := make([]map[string]any, len(ms))
	for i, m := range ms {
		out[i] = map[string]any{}
		for k, v := range m {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				out[i][k] = fmt.Sprint(v)
			} else {
				out[i][k] = v
			}
		}
	}
	return out
}
