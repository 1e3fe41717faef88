package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/trainer"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

var dataCmd = &cobra.Command{
	Use:   "data",
	Short: "Datasets: make the synthetic set, inspect and convert Arrow IPC / Parquet latent files",
}

var synthCmd = &cobra.Command{
	Use:   "synth",
	Short: "Write the synthetic dataset (docs/data.md) as Arrow IPC: OUT/train.arrow, OUT/heldout.arrow, OUT/synth.json",
	Long: `Write the synthetic dataset (docs/data.md): coloured shapes moving in 8 directions, RGB videos of
--size × --size pixels (default data.synth.size: 32) and --frames frames, latent = the fixed
invertible 4×4 space-to-depth map (48 channels at size/4), captions and toy text embeddings.
Sizes come from the job's data.synth (--config/--set/FEWSTEP_*) unless a flag here is given.
The same options give byte-identical files.`,
	Args: cobra.NoArgs,
	RunE: runSynth,
}

func init() {
	f := synthCmd.Flags()
	f.String("out", "runs/data/synth", "output folder")
	f.Int("count", 0, "training videos (default: data.synth.count)")
	f.Int("heldout-count", 0, "held-out videos (default: data.synth.heldout_count)")
	f.Int("frames", 0, "frames per video (default: data.synth.frames)")
	f.Int("size", 0, "video size in pixels, a multiple of 4 (default: data.synth.size)")
	f.Int("text-dim", 0, "toy text embedding width (default: data.synth.text_dim)")
	f.Int64("seed", 0, "dataset seed (default: data.synth.seed)")
	f.String("dtype", "float32", "latent storage dtype: float32, bfloat16 or float16")
	addJobFlags(synthCmd)
	dataCmd.AddCommand(synthCmd)
	rootCmd.AddCommand(dataCmd)
}

// synthOptions merges the job's data.synth with the flags the user gave.
func synthOptions(cmd *cobra.Command, job *config.Job) (data.SynthOptions, error) {
	s := job.Data.Synth
	o := data.SynthOptions{Count: s.Count, Heldout: s.HeldoutCount, Frames: s.Frames, Size: s.Size, TextDim: s.TextDim, Seed: s.Seed}
	f := cmd.Flags()
	for name, dst := range map[string]*int{"count": &o.Count, "heldout-count": &o.Heldout, "frames": &o.Frames, "size": &o.Size, "text-dim": &o.TextDim} {
		if f.Changed(name) {
			*dst, _ = f.GetInt(name)
		}
	}
	if f.Changed("seed") {
		o.Seed, _ = f.GetInt64("seed")
	}
	ds, _ := f.GetString("dtype")
	dt, err := data.ParseDType(ds)
	if err != nil {
		return o, fmt.Errorf("--dtype: %w", err)
	}
	o.DType = dt
	return o, nil
}

func runSynth(cmd *cobra.Command, _ []string) error {
	job, err := loadJob(cmd)
	if err != nil {
		return err
	}
	o, err := synthOptions(cmd, job)
	if err != nil {
		return err
	}
	out, _ := cmd.Flags().GetString("out")
	total := o.Count + o.Heldout
	bar := progressbar.NewOptions(total,
		progressbar.OptionSetWriter(cmd.ErrOrStderr()),
		progressbar.OptionSetDescription("synth"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("videos"),
		progressbar.OptionThrottle(trainer.BarThrottle(cmd.ErrOrStderr(), 100*time.Millisecond)),
		progressbar.OptionClearOnFinish(),
	)
	// The bar's clock starts at its first render unless started: the first update (a block of 64
	// videos) would then show 64 videos over ~0 s, millions of videos/s.
	bar.StartWithoutRender()
	t0 := time.Now()
	files, err := data.WriteSynth(out, o, func(done int) { bar.Set(done) })
	bar.Finish()
	if err != nil {
		return err
	}
	dt := time.Since(t0)
	// the saved job records what was made, so it trains on these files as it stands
	job.Data.Synth = config.Synth{Count: o.Count, HeldoutCount: o.Heldout, Frames: o.Frames, Size: o.Size, TextDim: o.TextDim, Seed: o.Seed}
	job.Data.Path, job.Data.Heldout = files.Train, files.Heldout
	if _, err := saveJob(job, out); err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "synth: %d train + %d held-out videos (%d frames, %d×%d, latent [48,%d,%d,%d] %s, text_dim %d, seed %d) in %.2fs: %.0f videos/s\n",
		o.Count, o.Heldout, o.Frames, o.Size, o.Size, o.Frames, o.Size/4, o.Size/4, o.DType, o.TextDim, o.Seed, dt.Seconds(), float64(total)/dt.Seconds())
	for _, p := range []string{files.Train, files.Heldout} {
		h, n, err := fileSHA256(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  %s  %d bytes  sha256 %s\n", p, n, h)
	}
	return nil
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

var inspectCmd = &cobra.Command{
	Use:   "inspect PATH",
	Short: "Schema, row count, tensor shapes and dtypes of an Arrow IPC or Parquet file or folder; --rows: per-row statistics",
	Long: `Print each file's columns, row count and, per tensor (FastVideo X_bytes/X_shape/X_dtype
triplets), the distinct shapes and dtypes. With --rows, every row's tensors are decoded and
summarised: id, shape, dtype, min, max, mean and sum (computed in float64). Every tensor of every
row is checked; bad data is an error naming the file, row and column.`,
	Args: cobra.ExactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		rows, _ := cmd.Flags().GetBool("rows")
		asJSON, _ := cmd.Flags().GetBool("json")
		reps, err := data.Inspect(args[0], rows)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if asJSON {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(reps)
		}
		for _, r := range reps {
			fmt.Fprint(w, r.Text())
		}
		return nil
	},
}

var convertCmd = &cobra.Command{
	Use:   "convert SRC DST",
	Short: "Rewrite Parquet dataset files (e.g. FastVideo's) as Arrow IPC for the zero-copy path: file → file.arrow, folder → folder",
	Args:  cobra.ExactArgs(2),
	RunE: func(cmd *cobra.Command, args []string) error {
		t0 := time.Now()
		outs, err := data.Convert(args[0], args[1])
		if err != nil {
			return err
		}
		for _, o := range outs {
			fmt.Fprintln(cmd.OutOrStdout(), o)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "convert: %d file(s) in %.2fs\n", len(outs), time.Since(t0).Seconds())
		return nil
	},
}

func init() {
	inspectCmd.Flags().Bool("rows", false, "decode every row and print per-tensor id, shape, dtype, min, max, mean, sum")
	inspectCmd.Flags().Bool("json", false, "print the report as JSON")
	dataCmd.AddCommand(inspectCmd, convertCmd)
}
