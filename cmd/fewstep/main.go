// Command fewstep distills many-step video diffusion transformers into few-step students.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "fewstep",
	Short:         "Distill slow many-step video DiTs (Wan2.1) into fast 1-4 step students",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func init() {
	rootCmd.PersistentFlags().BoolP("verbose", "v", false, "print the resolved job to stderr (every command also saves it as job.yaml beside its outputs)")
}

// Each command lives in its own file and registers itself with rootCmd in init().
func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "fewstep:", err)
		os.Exit(1)
	}
}
