// Command fewstep distills many-step video diffusion transformers into few-step students.
package main

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

var rootCmd = &cobra.Command{
	Use:               "fewstep",
	Short:             "Distill slow many-step video DiTs (Wan2.1) into fast 1-4 step students",
	SilenceUsage:      true,
	SilenceErrors:     true,
	PersistentPreRunE: finiteFlags,
}

// numericStrings are the string flags that hold a number or a comma-separated list of numbers
// (empty = the job's value).
var numericStrings = map[string]bool{"cfg": true, "shift": true, "timesteps": true, "student-timesteps": true}

// finiteFlags refuses NaN and Inf in every number flag given (float flags and numericStrings)
// before a command runs: strconv and pflag accept "NaN" and "Inf", which no setting means.
func finiteFlags(cmd *cobra.Command, _ []string) error {
	var err error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		kind := f.Value.Type()
		if err != nil || !(strings.HasPrefix(kind, "float") || (kind == "string" && numericStrings[f.Name])) {
			return
		}
		for _, s := range strings.Split(strings.Trim(f.Value.String(), "[]"), ",") {
			if v, perr := strconv.ParseFloat(strings.TrimSpace(s), 64); perr == nil && (math.IsNaN(v) || math.IsInf(v, 0)) {
				err = fmt.Errorf("--%s %s: %q is not a finite number", f.Name, f.Value.String(), strings.TrimSpace(s))
				return
			}
		}
	})
	return err
}

func init() {
	rootCmd.PersistentFlags().BoolP("verbose", "v", false, "print the resolved job to stderr (a command that runs a job also saves it as job.yaml beside its outputs)")
}

// Each command lives in its own file and registers itself with rootCmd in init().
func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "fewstep:", err)
		os.Exit(1)
	}
}
