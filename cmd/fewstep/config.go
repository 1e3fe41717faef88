package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/fewstep/fewstep/config"
	"github.com/spf13/cobra"
)

// addJobFlags gives a command the job flags: --config FILE and --set key=value (repeatable).
// Precedence (later wins): defaults < the --config file < FEWSTEP_* environment < --set.
func addJobFlags(cmd *cobra.Command) {
	cmd.Flags().StringP("config", "c", "", "YAML job file (defaults: config.Defaults)")
	cmd.Flags().StringArray("set", nil, "override a job key, e.g. --set train.steps=100 (repeatable; wins over the file and FEWSTEP_* variables)")
}

// loadJob resolves the job of a command that called addJobFlags; with -v it prints it to stderr.
// The caller saves it beside its outputs with saveJob.
func loadJob(cmd *cobra.Command) (*config.Job, error) {
	path, err := cmd.Flags().GetString("config")
	if err != nil {
		return nil, fmt.Errorf("%s: no --config flag (call addJobFlags): %w", cmd.Name(), err)
	}
	sets, err := cmd.Flags().GetStringArray("set")
	if err != nil {
		return nil, fmt.Errorf("%s: no --set flag (call addJobFlags): %w", cmd.Name(), err)
	}
	job, err := config.Load(path, sets)
	if err != nil {
		return nil, err
	}
	return job, printJob(cmd, job, path)
}

// printJob prints the resolved job to stderr when -v is given.
func printJob(cmd *cobra.Command, job *config.Job, src string) error {
	if v, _ := cmd.Flags().GetBool("verbose"); !v {
		return nil
	}
	b, err := job.YAML()
	if err != nil {
		return err
	}
	if src == "" {
		src = "defaults"
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "# fewstep %s: resolved job (%s, FEWSTEP_* env, --set)\n%s", cmd.Name(), src, b)
	return nil
}

// saveJob writes the resolved job as dir/job.yaml (atomically) and returns its path.
func saveJob(job *config.Job, dir string) (string, error) {
	p := filepath.Join(dir, "job.yaml")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return p, config.Save(job, p)
}
