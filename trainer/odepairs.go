package trainer

// Teacher ODE pairs (CausVid's ODE regression; dmd's regression: ode): the teacher integrates the
// flow ODE from noise for each prompt and the trajectory's points at the student's denoising list
// become the training rows. `fewstep data ode-pairs` writes them on request (WriteODEPairs);
// data.ode_pairs makes them before training (EnsureODEPairs, called by FromJobComm), spread over
// the ranks of a data-parallel job: each rank integrates its share of every round of prompts, the
// shares are all-gathered, and rank 0 writes the file that every rank then trains on.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/sampler"
)

// ODEPairs are the settings of a teacher ODE-pairs dataset.
type ODEPairs struct {
	Count, Steps, Batch int       // prompts (0 = all), Euler steps, prompts per sampler call per rank (0 = 8)
	CFG, Shift          float64   // teacher guidance w, schedule shift
	Timesteps           []float64 // the denoising list, before the shift
	Seed                int64     // prompt i's noise uses Seed+i, whoever makes it
	DType               kernels.DType
}

// ODEPairsResult says what WriteODEPairs wrote.
type ODEPairsResult struct {
	Count, Steps, NFE int
	Times             []float32 // recorded timesteps, descending, last 0
}

// FitContext zero-pads the prompts' contexts (and the null prompt's) to the model's text_len, as
// Wan pads every context.
func FitContext(set *eval.Set, cfg models.Config) error {
	if set.L == cfg.TextLen {
		return nil
	}
	text, err := models.PadContext(set.Text, set.N, set.L, set.TextDim, cfg.TextLen)
	if err != nil {
		return fmt.Errorf("prompts: %w", err)
	}
	null := set.Null
	if len(null) > 0 {
		if null, err = models.PadContext(null, 1, set.L, set.TextDim, cfg.TextLen); err != nil {
			return fmt.Errorf("null prompt: %w", err)
		}
	}
	set.Text, set.Null, set.L = text, null, cfg.TextLen
	return nil
}

func isFile(p string) bool { st, err := os.Stat(p); return err == nil && !st.IsDir() }

// WriteODEPairs integrates the teacher's flow ODE from noise for the first o.Count prompts of the
// dataset prompts and writes the trajectories (x at the list's levels, then the final x0) to out.
// With comm (a data-parallel job; nil: one rank) every rank calls it: round j's prompts
// [j·N·b, (j+1)·N·b) are split into the ranks' batches of b, each rank integrates its own, the
// rows are all-gathered in prompt order, and rank 0 alone writes out; the result is the same rows
// as one rank makes (prompt i's noise is seeded by Seed+i).
func WriteODEPairs(w io.Writer, job *config.Job, dev kernels.Device, comm dist.Comm, teacher, modelConfig, prompts, out string, o ODEPairs) (ODEPairsResult, error) {
	var res ODEPairsResult
	rank, world := 0, 1
	if comm != nil {
		rank, world = comm.Rank(), comm.Size()
	}
	if rank != 0 || w == nil {
		w = io.Discard
	}
	set, err := eval.LoadSet(prompts, job.Data.TextLen)
	if err != nil {
		return res, fmt.Errorf("ode-pairs: %w", err)
	}
	if o.Steps < 1 {
		return res, fmt.Errorf("ode-pairs: %d Euler steps, need ≥ 1", o.Steps)
	}
	var levels []float64
	for _, t := range o.Timesteps {
		levels = append(levels, sampler.Shift(t/1000, o.Shift))
	}
	grid := sampler.MergeGrid(sampler.EulerSigmas(o.Steps, o.Shift), levels)
	record := make([]float64, 0, len(levels)+1)
	for _, l := range levels {
		record = append(record, sampler.OnGrid(grid, l))
	}
	record = append(record, 0)
	for i := 1; i < len(record); i++ {
		if record[i] >= record[i-1] {
			return res, fmt.Errorf("ode-pairs: timesteps %v must decrease strictly", o.Timesteps)
		}
	}
	m, mcfg, err := pipeline.LoadModel(dev, job, teacher, modelConfig, set.C, set.TextDim)
	if err == nil {
		err = FitContext(set, mcfg) // Wan: every context zero-padded to text_len
	}
	if err != nil {
		return res, fmt.Errorf("ode-pairs: %w", err)
	}
	count := o.Count
	if count <= 0 || count > set.N {
		count = set.N
	}
	batch := o.Batch
	if batch <= 0 {
		batch = 8
	}
	mean, std := pipeline.NormStats(job, set.C)

	var wr *data.Writer
	if rank == 0 {
		if wr, err = data.NewWriter(out, []string{data.Latent, data.TextEmb, data.TrajLatent, data.TrajTimes}, 64); err != nil {
			return res, fmt.Errorf("ode-pairs: %w", err)
		}
	}
	abort := func(err error) (ODEPairsResult, error) {
		if wr != nil {
			wr.Abort()
		}
		return res, fmt.Errorf("ode-pairs: %w", err)
	}
	net := sampler.NewDiTNet(m, 0)
	defer net.Free()
	bar := progressbar.NewOptions(count, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription("ode-pairs"),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(BarThrottle(w, 100*time.Millisecond)), progressbar.OptionClearOnFinish())
	bar.StartWithoutRender() // its clock starts now, not at the first batch's update (that read [0s:0s])
	so := sampler.Options{Method: sampler.Euler, Sigmas: grid, CFG: o.CFG, Record: record}
	times := make([]float32, len(record))
	for i, s := range record {
		times[i] = float32(1000 * s)
	}
	lt, per := set.L*set.TextDim, set.C*set.F*set.H*set.W
	S := len(record)
	row := (S + 1) * per // one prompt's values: trajectory [S, C, F, H, W], then x0 [C, F, H, W]
	var mine, all *kernels.Tensor
	if comm != nil {
		mine, all = dev.Alloc(kernels.F32, batch*row), dev.Alloc(kernels.F32, world*batch*row) // [b, row], [N·b, row]
		defer dev.Free(mine)
		defer dev.Free(all)
	}
	host := make([]float32, world*batch*row) // the round's rows, prompt order [N·b, row]
	nfe := 0
	for lo0 := 0; lo0 < count; lo0 += world * batch {
		lo := min(lo0+rank*batch, count) // this rank's prompts [lo, hi)
		hi := min(lo+batch, count)
		if hi > lo {
			b := &sampler.Batch{C: set.C, F: set.F, H: set.H, W: set.W, L: set.L, TextDim: set.TextDim,
				Text: set.Text[lo*lt : hi*lt], Null: set.Null}
			for i := lo; i < hi; i++ {
				b.Seeds = append(b.Seeds, o.Seed+int64(i))
			}
			r, err := sampler.Sample(net, b, so)
			if err != nil {
				return abort(err)
			}
			nfe = r.NFE
			for i := lo; i < hi; i++ {
				k := i - lo
				dst := host[rank*batch*row+k*row:]
				for s, x := range r.Traj {
					copy(dst[s*per:(s+1)*per], x[k*per:(k+1)*per])
				}
				x0 := dst[S*per : S*per+per]
				copy(x0, r.Latents[k*per:(k+1)*per])
				if err := eval.Denormalize(x0, 1, set.C, mean, std); err != nil {
					return abort(err)
				}
			}
		}
		if comm != nil { // every rank's batch of this round, in rank (= prompt) order
			dev.FromHost(mine, host[rank*batch*row:(rank+1)*batch*row])
			if err := comm.AllGather(all, mine); err != nil {
				return abort(err)
			}
			if err := comm.Wait(); err != nil {
				return abort(err)
			}
			dev.ToHost(host, all)
		}
		hiRound := min(lo0+world*batch, count)
		if wr != nil {
			for i := lo0; i < hiRound; i++ {
				v := host[(i-lo0)*row : (i-lo0+1)*row]
				text := set.Text[i*lt : i*lt+set.Tokens[i]*set.TextDim]
				err := wr.Append(set.IDs[i], set.Captions[i],
					data.F32Tensor(data.Latent, []int{set.C, set.F, set.H, set.W}, v[S*per:], o.DType),
					data.F32Tensor(data.TextEmb, []int{set.Tokens[i], set.TextDim}, text, kernels.F32),
					data.F32Tensor(data.TrajLatent, []int{S, set.C, set.F, set.H, set.W}, v[:S*per], o.DType),
					data.F32Tensor(data.TrajTimes, []int{S}, times, kernels.F32))
				if err != nil {
					return abort(err)
				}
			}
		}
		bar.Set(hiRound)
	}
	bar.Finish()
	if wr != nil {
		if err := wr.Close(); err != nil {
			return res, fmt.Errorf("ode-pairs: %w", err)
		}
	}
	return ODEPairsResult{Count: count, Steps: len(grid) - 1, NFE: nfe, Times: times}, nil
}

// odePairsMeta identifies the pairs a run made (data/ode_pairs.arrow.json), so a resumed run reuses
// them.
type odePairsMeta struct {
	Count     int       `json:"count"`
	Steps     int       `json:"steps"`
	Timesteps []float64 `json:"timesteps"`
	Shift     float64   `json:"shift"`
	Teacher   string    `json:"teacher"`
	Seed      int64     `json:"seed"`
}

// EnsureODEPairs honours data.ode_pairs: the teacher's ODE pairs for the first count prompts of
// data.path, made once into the run folder's data/ (reused when their settings match), become the
// training data (job.Data.Path). With comm every rank calls it: the ranks share the work
// (WriteODEPairs), rank 0 writes the file, and the others wait for it and then read it (on a
// shared file system; a rank that does not see the file is an error saying so).
func EnsureODEPairs(w io.Writer, job *config.Job, dev kernels.Device, comm dist.Comm) error {
	op := job.Data.ODEPairs
	if op.Count <= 0 {
		return nil
	}
	rank := 0
	if comm != nil {
		rank = comm.Rank()
	}
	if rank != 0 || w == nil {
		w = io.Discard
	}
	rec, err := pipeline.ObjectiveRecipe(job) // the pairs are recorded at the student's denoising list
	if err != nil {
		return fmt.Errorf("data.ode_pairs: %w", err)
	}
	ts, shift := rec.Timesteps, rec.Shift
	if len(ts) == 0 {
		return fmt.Errorf("data.ode_pairs: objective %s samples with %s, which has no denoising list to record pairs at", job.Objective, rec.Sampler)
	}
	teacher := job.Roles["teacher"].Weights
	if a, err := filepath.Abs(teacher); err == nil {
		teacher = a // as the run's saved job.yaml names it, so that --resume finds the pairs made
	}
	meta := odePairsMeta{Count: op.Count, Steps: op.Steps, Timesteps: ts, Shift: shift, Teacher: teacher, Seed: job.Seed}
	out := filepath.Join(job.OutDir, "data", "ode_pairs.arrow")
	want, _ := json.Marshal(meta)
	have := func() bool {
		b, err := os.ReadFile(out + ".json")
		return err == nil && bytes.Equal(b, want) && isFile(out)
	}
	// Every rank decides alike whether to make them (rank 0's view), so that all or none enter the
	// collectives of WriteODEPairs.
	made := have()
	if comm != nil {
		if made, err = agree(dev, comm, made); err != nil {
			return fmt.Errorf("data.ode_pairs: %w", err)
		}
	}
	if made {
		job.Data.Path = out
		return nil
	}
	if job.Data.Path == out {
		return fmt.Errorf("data.ode_pairs: %s was made with other settings than %s and data.path names it, not the prompts to make new pairs from", out, want)
	}
	if job.Data.Path == "" {
		return fmt.Errorf("data.ode_pairs: no prompts to make the pairs from (data.path is empty)")
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	tmp := out + ".partial"
	r, err := WriteODEPairs(w, job, dev, comm, meta.Teacher, "", job.Data.Path, tmp,
		ODEPairs{Count: op.Count, Steps: op.Steps, CFG: 1, Shift: shift, Timesteps: ts, Seed: job.Seed, DType: kernels.F32})
	if err != nil {
		return fmt.Errorf("data.ode_pairs: %w", err)
	}
	var werr error
	if rank == 0 {
		if werr = os.Rename(tmp, out); werr == nil {
			werr = os.WriteFile(out+".json", want, 0o644)
		}
	}
	if comm != nil { // rank 0 has written the file (or failed); every rank learns which
		ok, err := agree(dev, comm, werr == nil)
		if err != nil {
			return fmt.Errorf("data.ode_pairs: %w", err)
		}
		if !ok && werr == nil {
			werr = fmt.Errorf("rank 0 could not write %s", out)
		}
		if werr == nil && !have() {
			werr = fmt.Errorf("rank %d does not see %s that rank 0 wrote (no shared file system between the nodes?): make the pairs once with `fewstep data ode-pairs` and give every node the same copy in data.path", rank, out)
		}
	}
	if werr != nil {
		return fmt.Errorf("data.ode_pairs: %w", werr)
	}
	fmt.Fprintf(w, "data: %d teacher ODE pairs (%d Euler steps, t = %v) in %.1fs: %s\n", r.Count, r.Steps, r.Times, time.Since(t0).Seconds(), out)
	job.Data.Path = out
	return nil
}

// agree broadcasts rank 0's flag to every rank (a barrier too).
func agree(dev kernels.Device, comm dist.Comm, flag bool) (bool, error) {
	v := dev.Alloc(kernels.F32, 1)
	defer dev.Free(v)
	f := float32(0)
	if flag {
		f = 1
	}
	dev.FromHost(v, []float32{f})
	if err := comm.Broadcast(v, 0); err != nil {
		return false, err
	}
	if err := comm.Wait(); err != nil {
		return false, err
	}
	h := []float32{0}
	dev.ToHost(h, v)
	return h[0] == 1, nil
}
