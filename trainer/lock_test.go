package trainer

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLockRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	unlock, err := LockRun(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	// A second holder is refused, naming the first, even with takeOver (the first is alive).
	for _, take := range []bool{false, true} {
		_, err := LockRun(dir, take)
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "in use by pid") {
			t.Fatalf("second lock (takeOver %v): %v", take, err)
		}
	}
	unlock()
	if _, err := os.Stat(filepath.Join(dir, LockFile)); !os.IsNotExist(err) {
		t.Fatalf("unlock left %s", LockFile)
	}
	unlock, err = LockRun(dir, false)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock()

	// A stale lock: a process of this host that is gone (as after kill -9), then another host.
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Skip("no true(1) to make a dead pid")
	}
	host, _ := os.Hostname()
	for _, owner := range []lockOwner{{PID: c.Process.Pid, Host: host, Started: "then"}, {PID: 1, Host: "elsewhere", Started: "then"}} {
		b, _ := json.Marshal(owner)
		os.WriteFile(filepath.Join(dir, LockFile), b, 0o644)
		_, err := LockRun(dir, false)
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "stale") || !strings.Contains(err.Error(), "--take-over") {
			t.Fatalf("stale lock of %+v: %v", owner, err)
		}
		if owner.Host != host && !strings.Contains(err.Error(), "elsewhere") {
			t.Fatalf("stale lock of another host: %v", err)
		}
		unlock, err := LockRun(dir, true)
		if err != nil {
			t.Fatalf("take over %+v: %v", owner, err)
		}
		var now lockOwner
		b, _ = os.ReadFile(filepath.Join(dir, LockFile))
		if json.Unmarshal(b, &now) != nil || now.PID != os.Getpid() {
			t.Fatalf("lock after take-over: %s", b)
		}
		unlock()
	}
}

// state.json is checked before anything of it is used.
func TestParseStateRefuses(t *testing.T) {
	for _, c := range []struct{ json, want string }{
		{`{"step":-3,"objective":"dmd","loader_cursor":"e30="}`, "step -3 is negative"},
		{`{"step":4,"objective":"dmd","adamw_steps":{"student":5},"loader_cursor":"e30="}`, "adamw_steps of student = 5"},
		{`{"step":4,"objective":"dmd","adamw_steps":{"critic":-1},"loader_cursor":"e30="}`, "adamw_steps of critic = -1"},
		{`{"step":4,"loader_cursor":"e30="}`, "no objective"},
		{`{"step":4,"objective":"dmd"}`, "no loader_cursor"},
		{`{"step":4,"objective":"dmd","loader_cursor":"e30=","extra":1}`, "unknown field"},
		{`{"step":"4"}`, "not a checkpoint state"},
		{`{"step":4,"objective":"dmd","loader_cursor":"e30="} {}`, "after the JSON object"},
	} {
		_, err := parseState([]byte(c.json))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.json, err, c.want)
		}
	}
}

// A folder that is not a run is an error saying what was expected; `latest` must name a checkpoint
// folder of its own folder.
func TestResolveCheckpointRefuses(t *testing.T) {
	dir := t.TempDir()
	if _, err := ResolveCheckpoint(dir); err == nil || !strings.Contains(err.Error(), "not a run: expected a run folder") {
		t.Fatalf("empty folder: %v", err)
	}
	os.MkdirAll(filepath.Join(dir, "checkpoints"), 0o755)
	for _, latest := range []string{"../../etc", "step-000004"} {
		os.WriteFile(filepath.Join(dir, "checkpoints", "latest"), []byte(latest+"\n"), 0o644)
		if _, err := ResolveCheckpoint(dir); err == nil {
			t.Fatalf("latest %q accepted", latest)
		}
	}
	if got := RunOfCheckpoint(filepath.Join(dir, "checkpoints", "step-000004")); got != dir {
		t.Fatalf("RunOfCheckpoint = %s, want %s", got, dir)
	}
	if got := RunOfCheckpoint(filepath.Join(dir, "elsewhere")); got != "" {
		t.Fatalf("RunOfCheckpoint of a loose checkpoint = %s", got)
	}
}
