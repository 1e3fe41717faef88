package main

import (
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// flagTable is the one meaning of every flag name across all commands: its type and words its
// help must use (one of them, case-insensitive). A new flag, or a name reused with another type or
// meaning, fails TestFlagsOneMeaningPerName until this table says what the name means.
var flagTable = map[string]struct {
	typ   string
	words []string // the help text contains at least one
}{
	"verbose":           {"bool", []string{"resolved job"}},
	"config":            {"string", []string{"YAML job file"}},
	"set":               {"stringArray", []string{"override a job key"}},
	"model-config":      {"string", []string{"config.json"}},
	"preset":            {"string", []string{"architecture preset"}},
	"weights":           {"string", []string{"checkpoint"}},
	"from":              {"string", []string{"run folder"}},
	"role":              {"string", []string{"role"}},
	"teacher":           {"string", []string{"teacher checkpoint"}},
	"student":           {"string", []string{"student checkpoint"}},
	"recipe":            {"string", []string{"recipe.json"}},
	"inputs":            {"string", []string{"safetensors"}},
	"prompts":           {"string", []string{"prompts"}},
	"caption":           {"stringArray", []string{"caption"}},
	"samples":           {"string", []string{"samples file"}},
	"manifest":          {"string", []string{"manifest.jsonl"}},
	"heldout":           {"string", []string{"held-out dataset"}},
	"heldout-count":     {"int", []string{"held-out videos"}},
	"out":               {"string", []string{"output", "run folder"}},
	"resume":            {"string", []string{"continue from"}},
	"dry-run":           {"bool", []string{"validate"}},
	"dry":               {"bool", []string{"no GPU"}},
	"scaling":           {"bool", []string{"one-GPU"}},
	"launcher":          {"string", []string{"multi-node"}},
	"rdzv-timeout":      {"duration", []string{"rendezvous"}},
	"embeddings":        {"string", []string{"embeddings"}},
	"students":          {"stringArray", []string{"students"}},
	"precise":           {"bool", []string{"evaluation seeds"}},
	"seeds":             {"int", []string{"evaluation seeds"}},
	"fd-blocks":         {"bool", []string{"feature block"}},
	"layout":            {"string", []string{"layout"}},
	"bf16-operands":     {"bool", []string{"bf16"}},
	"model":             {"string", []string{"exported student folder"}},
	"addr":              {"string", []string{"listen address"}},
	"max-frames":        {"int", []string{"latent frames"}},
	"max-prompts":       {"int", []string{"prompts per request"}},
	"max-batch":         {"int", []string{"prompts merged"}},
	"max-queue":         {"int", []string{"requests waiting"}},
	"max-body":          {"int64", []string{"body bytes"}},
	"batch-wait":        {"duration", []string{"batch waits"}},
	"scale":             {"int", []string{"upscaling"}},
	"take-over":         {"bool", []string{"stale lock"}},
	"std":               {"float64", []string{"std"}},
	"text-len":          {"int", []string{"text_len"}},
	"device":            {"string", []string{"cuda"}},
	"devices":           {"string", []string{"GPUs", "ranks"}},
	"dtype":             {"string", []string{"dtype", "element type", "storage", "float32"}},
	"gemm":              {"string", []string{"GEMMs"}},
	"sampler":           {"string", []string{"euler"}},
	"student-sampler":   {"string", []string{"fewstep"}},
	"steps":             {"int", []string{"steps"}},
	"cfg":               {"float64", []string{"guidance w"}},
	"teacher-cfg":       {"float64", []string{"guidance w"}},
	"student-cfg":       {"float64", []string{"guidance w"}},
	"shift":             {"float64", []string{"shift"}},
	"teacher-shift":     {"float64", []string{"shift"}},
	"student-shift":     {"float64", []string{"shift"}},
	"timesteps":         {"string", []string{"timesteps"}},
	"student-timesteps": {"string", []string{"timesteps"}},
	"grid-n":            {"int", []string{"grid"}},
	"context-noise":     {"float64", []string{"σ"}},
	"count":             {"int", []string{"videos", "prompts"}},
	"frames":            {"int", []string{"frames"}},
	"long-frames":       {"int", []string{"latent frames"}},
	"merge":             {"stringArray", []string{"table.json"}},
	"batch":             {"int", []string{"batch"}},
	"seed":              {"int64", []string{"seed"}},
	"preview-scale":     {"int", []string{"upscaling"}},
	"size":              {"int", []string{"pixels"}},
	"text-dim":          {"int", []string{"text embedding width"}},
	"heads":             {"int", []string{"heads"}},
	"head-dim":          {"int", []string{"head dim"}},
	"tokens":            {"int", []string{"tokens"}},
	"ctx":               {"int", []string{"context tokens"}},
	"height":            {"int", []string{"latent height"}},
	"width":             {"int", []string{"latent width"}},
	"causal":            {"bool", []string{"block-causal"}},
	"chunk-frames":      {"int", []string{"frames per", "chunks of"}},
	"chunk-tokens":      {"int", []string{"chunks of this many tokens"}},
	"chunks":            {"int", []string{"chunks"}},
	"local-frames":      {"int", []string{"window"}},
	"sink-frames":       {"int", []string{"start of the window"}},
	"iters":             {"int", []string{"timed"}},
	"warmup":            {"int", []string{"untimed"}},
	"backward":          {"bool", []string{"backward"}},
	"train":             {"bool", []string{"forward+backward"}},
	"graph":             {"bool", []string{"CUDA graph"}},
	"profile":           {"bool", []string{"per kernel"}},
	"objective":         {"string", []string{"objective"}},
	"peer":              {"string", []string{"wan_ref.py"}},
	"peer-compile":      {"bool", []string{"--compile"}},
	"peak-tflops":       {"float64", []string{"peak"}},
	"mem-limit-gib":     {"float64", []string{"memory"}},
	"noise":             {"string", []string{"noise"}},
	"recompute":         {"bool", []string{"recompute"}},
	"shard":             {"string", []string{"shard"}},
	"world":             {"int", []string{"ranks"}},
	"mib":               {"int", []string{"MiB"}},
	"rows":              {"bool", []string{"every row"}},
	"json":              {"bool", []string{"JSON"}},
	"help":              {"bool", []string{"help for"}},     // cobra's
	"no-descriptions":   {"bool", []string{"descriptions"}}, // cobra's completion commands
}

// allCommands lists c and its subcommands, with cobra's own help flags and completion commands
// added as Execute adds them (so the result does not depend on whether a test ran Execute first).
func allCommands(c *cobra.Command) []*cobra.Command {
	if c == rootCmd {
		c.InitDefaultCompletionCmd()
		c.InitDefaultHelpCmd()
	}
	c.InitDefaultHelpFlag()
	out := []*cobra.Command{c}
	for _, s := range c.Commands() {
		out = append(out, allCommands(s)...)
	}
	return out
}

// isZeroDefault says whether pflag shows no "(default …)" for the flag (pflag's own rule).
func isZeroDefault(f *pflag.Flag) bool {
	switch f.DefValue {
	case "", "0", "false", "[]", "<nil>":
		return true
	}
	return false
}

// Every flag of every command: its name is in flagTable with the same type and its help uses the
// table's words (one meaning per name); its help names no type placeholder (a backquoted word in a
// usage string becomes the flag's placeholder in --help), and says its default once.
func TestFlagsOneMeaningPerName(t *testing.T) {
	seen := map[string][]string{}
	for _, c := range allCommands(rootCmd) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			where := c.CommandPath() + " --" + f.Name
			seen[f.Name] = append(seen[f.Name], c.CommandPath())
			want, ok := flagTable[f.Name]
			if !ok {
				t.Errorf("%s: not in flagTable (say what the name means, once for every command)", where)
				return
			}
			if got := f.Value.Type(); got != want.typ {
				t.Errorf("%s: type %s, but --%s is a %s everywhere else", where, got, f.Name, want.typ)
			}
			hit := false
			for _, w := range want.words {
				hit = hit || strings.Contains(strings.ToLower(f.Usage), strings.ToLower(w))
			}
			if !hit {
				t.Errorf("%s: help %q uses none of %q, the meaning of --%s", where, f.Usage, want.words, f.Name)
			}
			if strings.Contains(f.Usage, "`") {
				t.Errorf("%s: help %q has a backquote, which --help renders as the flag's type", where, f.Usage)
			}
			if strings.Contains(f.Usage, "(default") && !isZeroDefault(f) {
				t.Errorf("%s: help %q says its default and pflag adds (default %s)", where, f.Usage, f.DefValue)
			}
		})
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	for n := range flagTable {
		if _, ok := seen[n]; !ok {
			t.Errorf("flagTable has %s, which no command has", n)
		}
	}
	t.Logf("%d flag names over %d commands", len(names), len(allCommands(rootCmd)))
}

// `--help` of every command renders: each flag's placeholder (pflag.UnquoteUsage: a backquoted
// word of the usage, else the type's name) is its type's name (none for a bool) and appears on its
// line, no "(default" appears twice on a line, and no help text cites a file that is not in the
// repository.
func TestHelpRenders(t *testing.T) {
	typeWords := map[string]string{"string": "string", "int": "int", "int64": "int", "float64": "float",
		"stringArray": "stringArray", "bool": "", "duration": "duration"}
	for _, c := range allCommands(rootCmd) {
		var sb strings.Builder
		c.SetOut(&sb)
		c.SetErr(&sb)
		if err := c.Help(); err != nil {
			t.Fatalf("%s --help: %v", c.CommandPath(), err)
		}
		h := sb.String()
		c.SetOut(nil)
		c.SetErr(nil)
		c.Flags().VisitAll(func(f *pflag.Flag) {
			ph, _ := pflag.UnquoteUsage(f)
			if want := typeWords[f.Value.Type()]; ph != want {
				t.Errorf("%s --help: --%s shows placeholder %q, want %q", c.CommandPath(), f.Name, ph, want)
			}
			if !strings.Contains(h, strings.TrimSpace("--"+f.Name+" "+ph)) {
				t.Errorf("%s --help: no line for --%s %s", c.CommandPath(), f.Name, ph)
			}
		})
		for _, line := range strings.Split(h, "\n") {
			if strings.Count(line, "(default") > 1 {
				t.Errorf("%s --help: two defaults: %s", c.CommandPath(), strings.TrimSpace(line))
			}
		}
		if strings.Contains(h, "`") {
			t.Errorf("%s --help has a backquote", c.CommandPath())
		}
		for _, doc := range []string{"DATA.md", "OBJECTIVES.md", "MODEL.md", "ARCHITECTURE.md"} {
			if strings.Contains(h, doc) {
				t.Errorf("%s --help cites %s, which is not in the repository (docs/)", c.CommandPath(), doc)
			}
		}
	}
}

// bench's one-line help names every bench subcommand (it said "(forward, attention)" when there were
// five).
func TestBenchHelpListsSubcommands(t *testing.T) {
	for _, c := range benchCmd.Commands() {
		if !strings.Contains(benchCmd.Short, c.Name()) {
			t.Errorf("bench's help %q does not name its subcommand %s", benchCmd.Short, c.Name())
		}
	}
}
