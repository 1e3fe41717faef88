package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

// The bench commands' output: a table for a person by default, or with --json the one JSON line per
// result that scripts/gpu-*.sh parse (and shared/reference/wan_ref.py prints in the same form).

func init() {
	benchCmd.PersistentFlags().Bool("json", false, "print each result as one JSON line (what scripts/gpu-*.sh read) instead of a table")
}

// benchReport prints a benchmark's result res on cmd's stdout: one JSON line with --json, else a
// table (benchTable).
func benchReport(cmd *cobra.Command, res map[string]any) error {
	if j, _ := cmd.Flags().GetBool("json"); j {
		return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
	}
	return benchTable(cmd.OutOrStdout(), "fewstep bench "+cmd.Name(), res)
}

// benchKeyGroup orders a result's keys: what was run (0), what it measured (1: times, rates, memory),
// nested results (2), the notes (3).
func benchKeyGroup(k string, v any) int {
	switch {
	case k == "note" || k == "check":
		return 3
	case isNested(v):
		return 2
	}
	for _, u := range []string{"_ms", "ms_", "TFLOP", "MFU", "fps", "GBps", "GiB", "speedup", "scaling", "per_s", "over_ours", "error", "nfe"} {
		if strings.Contains(k, u) {
			return 1
		}
	}
	return 0
}

func isNested(v any) bool {
	switch v.(type) {
	case map[string]any, map[string]float64, []map[string]any:
		return true
	}
	return false
}

// benchTable writes res as "key  value" rows under a title, the keys grouped by benchKeyGroup and
// sorted within a group, nested maps indented below their key, the notes last.
func benchTable(w io.Writer, title string, res map[string]any) error {
	keys := make([]string, 0, len(res))
	width := 0
	for k := range res {
		keys = append(keys, k)
		width = max(width, len(k))
	}
	sort.Slice(keys, func(i, j int) bool {
		gi, gj := benchKeyGroup(keys[i], res[keys[i]]), benchKeyGroup(keys[j], res[keys[j]])
		if gi != gj {
			return gi < gj
		}
		return keys[i] < keys[j]
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%s (--json: one JSON line)\n", title)
	group := 0
	for _, k := range keys {
		v := res[k]
		if g := benchKeyGroup(k, v); g != group {
			group = g
			b.WriteString("\n")
		}
		switch m := v.(type) {
		case map[string]any:
			fmt.Fprintf(&b, "  %s\n", k)
			writeNested(&b, m, "    ")
		case map[string]float64:
			fmt.Fprintf(&b, "  %s\n", k)
			writeBreakdown(&b, m, "    ")
		case []map[string]any:
			fmt.Fprintf(&b, "  %-*s  %d entries (--json for them)\n", width, k, len(m))
		default:
			fmt.Fprintf(&b, "  %-*s  %s\n", width, k, benchValue(v))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeNested writes a nested result's keys sorted (a breakdown of numbers, map[string]float64, largest
// first), the note last, one level deeper for maps within it.
func writeNested(b *strings.Builder, m map[string]any, indent string) {
	keys := make([]string, 0, len(m))
	width := 0
	for k := range m {
		keys = append(keys, k)
		width = max(width, len(k))
	}
	sort.Slice(keys, func(i, j int) bool {
		if (keys[i] == "note") != (keys[j] == "note") {
			return keys[j] == "note"
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		switch sub := m[k].(type) {
		case map[string]any:
			fmt.Fprintf(b, "%s%s\n", indent, k)
			writeNested(b, sub, indent+"  ")
		case map[string]float64:
			fmt.Fprintf(b, "%s%s\n", indent, k)
			writeBreakdown(b, sub, indent+"  ")
		default:
			fmt.Fprintf(b, "%s%-*s  %s\n", indent, width, k, benchValue(sub))
		}
	}
}

// writeBreakdown writes a breakdown (memory by item, metrics by name) largest first.
func writeBreakdown(b *strings.Builder, m map[string]float64, indent string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		fmt.Fprintf(b, "%s%10s  %s\n", indent, benchValue(m[k]), k)
	}
}

// benchValue formats one value: numbers with 4 significant digits (integers as they are), lists
// comma-separated.
func benchValue(v any) string {
	switch x := v.(type) {
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e12 {
			return fmt.Sprintf("%.0f", x)
		}
		return fmt.Sprintf("%.4g", x)
	case float32:
		return benchValue(float64(x))
	case []float64:
		s := make([]string, len(x))
		for i, f := range x {
			s[i] = benchValue(f)
		}
		return strings.Join(s, ", ")
	case []any:
		s := make([]string, len(x))
		for i, f := range x {
			s[i] = benchValue(f)
		}
		return strings.Join(s, ", ")
	case []string:
		return strings.Join(x, ", ")
	}
	return fmt.Sprint(v)
}
