package main

import (
	"regexp"
	"strings"
	"testing"
)

// The table's bar before its first row is done: the rows and the time elapsed, no time left (it
// read [1m27s:0s] while the 50-step teacher row ran).
func TestTableBarNoPrediction(t *testing.T) {
	var b strings.Builder
	bar := tableBar(&b)
	bar.ChangeMax(7)
	bar.Set(0)
	bar.Exit()
	out := b.String()
	if !strings.Contains(out, "(0/7)") {
		t.Fatalf("bar %q: no row count", out)
	}
	if regexp.MustCompile(`\[[^\]]*:[^\]]*\]`).MatchString(out) || !regexp.MustCompile(`\[\d+s\]`).MatchString(out) {
		t.Errorf("bar %q: want the time elapsed alone, no [elapsed:left]", out)
	}
}
