package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// `fewstep bench` prints a table for a person by default and, with --json, the JSON line scripts
// read: the same result both ways (bench train --dry runs on the CPU).
func TestBenchTableAndJSON(t *testing.T) {
	args := []string{"bench", "train", "--dry", "--objective", "dmd", "--preset", "tiny", "--frames", "4", "--height", "4", "--width", "4", "--ctx", "3"}
	table := run(t, args...)
	line := run(t, append(args, "--json")...)
	if strings.HasPrefix(strings.TrimSpace(table), "{") || !strings.HasPrefix(table, "fewstep bench train") {
		t.Fatalf("default output is not a table:\n%s", table)
	}
	var res map[string]any
	if strings.Count(strings.TrimSpace(line), "\n") != 0 || json.Unmarshal([]byte(line), &res) != nil {
		t.Fatalf("--json: not one JSON line: %q", line)
	}
	dry, _ := res["dry"].(map[string]any)
	peak, ok := dry["peak_GiB"].(float64)
	if !ok || res["objective"] != "dmd" {
		t.Fatalf("--json: %v", res)
	}
	m := regexp.MustCompile(`(?m)^\s+peak_GiB\s+(\S+)$`).FindStringSubmatch(table)
	if m == nil || !regexp.MustCompile(`(?m)^\s+objective\s+dmd$`).MatchString(table) {
		t.Fatalf("the table has no objective or peak_GiB row:\n%s", table)
	}
	if v, err := strconv.ParseFloat(m[1], 64); err != nil || v != peak && strconv.FormatFloat(peak, 'g', 4, 64) != m[1] {
		t.Errorf("table peak_GiB %s, JSON %g", m[1], peak)
	}
}

// Every script that runs a bench command asks for --json: they read its lines as JSON.
func TestScriptsAskBenchForJSON(t *testing.T) {
	run := regexp.MustCompile(`(\$\{?[A-Za-z_]+\}?(/fewstep)?|fewstep) bench (forward|attention|stream|sample|train|allreduce)\b`)
	files, _ := filepath.Glob(filepath.Join("..", "..", "scripts", "*.sh"))
	if len(files) == 0 {
		t.Fatal("no scripts/*.sh")
	}
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "#") || strings.Contains(l, `log "`) || !run.MatchString(l) {
				continue
			}
			n++
			if !strings.Contains(l, "--json") {
				t.Errorf("%s:%d runs a bench without --json: %s", f, i+1, strings.TrimSpace(l))
			}
		}
	}
	if n == 0 {
		t.Fatal("found no bench command in scripts/*.sh")
	}
}
