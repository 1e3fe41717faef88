package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/fewstep/fewstep/plots"
	"github.com/spf13/cobra"
)

var plotCmd = &cobra.Command{
	Use:   "plot RUN",
	Short: "Draw a run's training curves (metrics.jsonl) as PNG figures in RUN/plots/",
	Long: `Reads RUN/metrics.jsonl (or the metrics.jsonl file given) and writes one PNG per group of keys,
one panel per key against the step (every logged value, and their moving average when there are
more than 20): RUN/plots/losses.png, grad_norm.png, lr.png, validation.png and other.png. Training
redraws them at every checkpoint and validation; this command draws them on demand, e.g. while a
run is going or for a run from before plots existed. docs/metrics.md says what every key means.`,
	Args: cobra.ExactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		src := args[0]
		if st, err := os.Stat(src); err == nil && st.IsDir() {
			src = filepath.Join(src, "metrics.jsonl")
		}
		out, _ := cmd.Flags().GetString("out")
		if out == "" {
			out = filepath.Join(filepath.Dir(src), "plots")
		}
		files, err := plots.Write(src, out)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		if len(files) == 0 {
			return fmt.Errorf("plot: %s has no metrics", src)
		}
		for _, f := range files {
			fmt.Fprintln(cmd.OutOrStdout(), f)
		}
		return nil
	},
}

func init() {
	plotCmd.Flags().String("out", "", "output folder (default: plots/ beside metrics.jsonl)")
	rootCmd.AddCommand(plotCmd)
}
