package trainer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// LockFile is the name of a run folder's lock: while a job writes the folder it holds an exclusive
// lock on this file (flock where the system has it) and the file names the holder.
const LockFile = "run.lock"

// ErrLocked is wrapped by LockRun's error when another process holds the folder, or held it and
// did not let go (a stale lock: the error says so and that takeOver takes it).
var ErrLocked = errors.New("run folder locked")

// lockOwner is what run.lock holds.
type lockOwner struct {
	PID     int    `json:"pid"`
	Host    string `json:"host"`
	Started string `json:"started"`
}

// LockRun takes the run folder dir for this process, creating it: two jobs writing one folder would
// interleave their metrics and checkpoints. It fails, wrapping ErrLocked, when a live process holds
// it (naming its pid and host), and when the lock is stale (its process, on this host, is gone: a
// kill -9 or a crash; or its host is another one, where this process cannot tell) unless takeOver.
// unlock removes the lock; a process that dies without it leaves the stale lock the next LockRun
// reports.
func LockRun(dir string, takeOver bool) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, LockFile)
	host, _ := os.Hostname()
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("run folder %s: lock: %w", dir, err)
		}
		held, err := tryLock(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("run folder %s: lock: %w", dir, err)
		}
		var prev lockOwner
		b, _ := os.ReadFile(path)
		hasPrev := json.Unmarshal(b, &prev) == nil && prev.PID > 0
		if !held {
			f.Close()
			return nil, fmt.Errorf("run folder %s is in use by pid %d on host %s (since %s): %w; a second job on one folder would interleave its metrics and checkpoints: wait for it or use another out_dir",
				dir, prev.PID, prev.Host, prev.Started, ErrLocked)
		}
		// Locked: unless the file was replaced meanwhile (a holder's unlock removes it), it is ours.
		if fi, err1 := f.Stat(); err1 == nil {
			if pi, err2 := os.Stat(path); err2 != nil || !os.SameFile(fi, pi) {
				f.Close()
				if attempt < 5 {
					continue
				}
				return nil, fmt.Errorf("run folder %s: its lock file keeps changing: %w", dir, ErrLocked)
			}
		}
		if hasPrev && !takeOver {
			f.Close()
			why := fmt.Sprintf("pid %d on this host is not running (killed or crashed)", prev.PID)
			if prev.Host != host {
				why = fmt.Sprintf("it was taken on host %s, where this process cannot see whether pid %d still runs", prev.Host, prev.PID)
			} else if processAlive(prev.PID) && !haveFlock {
				why = fmt.Sprintf("pid %d on this host is running", prev.PID)
			}
			return nil, fmt.Errorf("run folder %s has a stale lock (%s, since %s): %w; take it over with --take-over if no job writes the folder",
				dir, why, prev.Started, ErrLocked)
		}
		me, _ := json.Marshal(lockOwner{PID: os.Getpid(), Host: host, Started: time.Now().UTC().Format(time.RFC3339)})
		if err := f.Truncate(0); err == nil {
			_, err = f.WriteAt(append(me, '\n'), 0)
		}
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("run folder %s: lock: %w", dir, err)
		}
		return func() {
			os.Remove(path)
			f.Close() // releases the flock
		}, nil
	}
}
