package dist

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// freeAddr is a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

// joinAll runs Join for every rendezvous in its own goroutine (process 0 last, after a pause, so
// the others retry) and returns the sessions and errors by process.
func joinAll(rs []Rendezvous, delay0 time.Duration) ([]*Session, []error) {
	ss, errs := make([]*Session, len(rs)), make([]error, len(rs))
	var wg sync.WaitGroup
	for i := range rs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if rs[i].Rank == 0 {
				time.Sleep(delay0)
			}
			ss[i], errs[i] = Join(rs[i])
		}(i)
	}
	wg.Wait()
	return ss, errs
}

func rdzv(addr string, rank, size int, gpus int) Rendezvous {
	return Rendezvous{Addr: addr, Rank: rank, Size: size, Job: "abc123", GPUs: gpus, Host: fmt.Sprintf("host%d", rank),
		Timeout: 5 * time.Second, Heartbeat: 20 * time.Millisecond, Silence: 2 * time.Second}
}

// TestRendezvousArrive: four processes with 2, 1, 3 and 1 GPUs, process 0 starting last: every one
// learns every GPU count, its first global rank (0, 2, 3, 6 of 7) and process 0's NCCL id; a
// barrier holds each until all have come; Close ends it without a loss.
func TestRendezvousArrive(t *testing.T) {
	addr := freeAddr(t)
	gpus := []int{2, 1, 3, 1}
	var rs []Rendezvous
	for k, g := range gpus {
		rs = append(rs, rdzv(addr, k, 4, g))
	}
	id := []byte("the unique id of process 0")
	rs[0].ID = func() ([]byte, error) { return id, nil }
	ss, errs := joinAll(rs, 300*time.Millisecond)
	for k, err := range errs {
		if err != nil {
			t.Fatalf("process %d: %v", k, err)
		}
	}
	for k, s := range ss {
		if !slices.Equal(s.GPUs, gpus) || s.First != []int{0, 2, 3, 6}[k] || s.Ranks != 7 || !bytes.Equal(s.ID, id) || s.Rank != k || s.Size != 4 {
			t.Errorf("process %d: GPUs %v first %d of %d id %q; want %v, %d of 7, %q", k, s.GPUs, s.First, s.Ranks, s.ID, gpus, []int{0, 2, 3, 6}[k], id)
		}
	}
	// Barriers: nobody passes barrier n before everyone has reached it.
	var mu sync.Mutex
	reached := map[int]int{}
	var wg sync.WaitGroup
	for k, s := range ss {
		wg.Add(1)
		go func(k int, s *Session) {
			defer wg.Done()
			for n := 1; n <= 3; n++ {
				time.Sleep(time.Duration(k*20) * time.Millisecond)
				mu.Lock()
				reached[n]++
				mu.Unlock()
				if err := s.Barrier(); err != nil {
					t.Errorf("process %d barrier %d: %v", k, n, err)
					return
				}
				mu.Lock()
				if reached[n] != 4 {
					t.Errorf("process %d passed barrier %d with %d of 4 there", k, n, reached[n])
				}
				mu.Unlock()
			}
		}(k, s)
	}
	wg.Wait()
	time.Sleep(100 * time.Millisecond) // heartbeats flow
	for k, s := range ss {
		if err := s.Alive(); err != nil {
			t.Errorf("process %d: %v", k, err)
		}
	}
	for _, s := range ss[1:] { // the others finish first; then process 0
		s.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if err := ss[0].Alive(); err != nil {
		t.Errorf("after the others said goodbye, process 0: %v", err)
	}
	ss[0].Close()
}

// TestRendezvousErrors: a process that never arrives (the timeout names host:port and who is
// missing, on process 0 and on those who came), a process told another number of processes or
// running another job (every process's error names it), two processes claiming one rank.
func TestRendezvousErrors(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		addr := freeAddr(t)
		rs := []Rendezvous{rdzv(addr, 0, 4, 1), rdzv(addr, 1, 4, 1), rdzv(addr, 3, 4, 1)}
		for i := range rs {
			rs[i].Timeout = 700 * time.Millisecond
		}
		t0 := time.Now()
		_, errs := joinAll(rs, 0)
		for k, err := range errs {
			if err == nil || !strings.Contains(err.Error(), "rendezvous at "+addr) || !strings.Contains(err.Error(), "process(es) 2 of 4 did not arrive within 700ms") {
				t.Errorf("process %d: %v, want the timeout naming %s and process 2", rs[k].Rank, err, addr)
			}
		}
		if el := time.Since(t0); el > 5*time.Second {
			t.Errorf("the timeout of 700ms took %s", el)
		}
	})
	t.Run("no process 0", func(t *testing.T) {
		addr := freeAddr(t)
		r := rdzv(addr, 1, 2, 1)
		r.Timeout = 500 * time.Millisecond
		_, err := Join(r)
		if err == nil || !strings.Contains(err.Error(), "could not reach process 0 at "+addr) {
			t.Errorf("%v, want an error naming %s", err, addr)
		}
	})
	for _, tc := range []struct {
		name  string
		edit  func(rs []Rendezvous)
		wants []string
	}{
		{"world size", func(rs []Rendezvous) { rs[2].Size = 4 }, []string{"process 2 (host2) was told the job has 4 processes, process 0 (host0) was told 3"}},
		{"job", func(rs []Rendezvous) { rs[1].Job = "fff000" }, []string{"process 1 (host1) runs another job than process 0 (host0): job hash fff000 vs abc123"}},
		{"rank twice", func(rs []Rendezvous) { rs[2].Rank = 1 }, []string{"two processes claim rank 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			rs := []Rendezvous{rdzv(addr, 0, 3, 1), rdzv(addr, 1, 3, 1), rdzv(addr, 2, 3, 1)}
			for i := range rs {
				rs[i].Timeout = 2 * time.Second
			}
			tc.edit(rs)
			_, errs := joinAll(rs, 100*time.Millisecond)
			for k, err := range errs {
				if err == nil {
					t.Errorf("process %d: no error", k)
					continue
				}
				for _, w := range tc.wants {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("process %d: error %q does not say %q", k, err, w)
					}
				}
			}
		})
	}
}

// die is a process's end without goodbye, as when it is killed.
func die(s *Session) {
	s.mu.Lock()
	s.closed = true // its own readers stop quietly
	s.mu.Unlock()
	s.closeConns()
}

// TestRendezvousLiveness: after the rendezvous, a process that disconnects without goodbye, one
// that falls silent and one that reports a failure are each noticed by every other process within
// a bounded time, with an error that names it; Watch then aborts and, past its grace, exits.
func TestRendezvousLiveness(t *testing.T) {
	for _, tc := range []struct {
		name  string
		who   int
		act   func(s *Session)
		wants []string
	}{
		{"disconnect", 2, die, []string{"process 2 (host2) disconnected without finishing"}},
		{"process 0 disconnects", 0, die, []string{"process 0 (127.0.0.1:", "disconnected without finishing"}},
		{"fail", 1, func(s *Session) { s.Fail(errors.New("out of memory")) }, []string{"process 1 (host1) failed: out of memory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			rs := []Rendezvous{rdzv(addr, 0, 3, 1), rdzv(addr, 1, 3, 1), rdzv(addr, 2, 3, 1)}
			ss, errs := joinAll(rs, 0)
			for k, err := range errs {
				if err != nil {
					t.Fatalf("process %d: %v", k, err)
				}
			}
			type event struct {
				k    int
				what string
				err  error
				at   time.Duration
			}
			evs := make(chan event, 16)
			t0 := time.Now()
			for k, s := range ss {
				if k == tc.who {
					continue
				}
				s.Watch(func(err error) { evs <- event{k, "abort", err, time.Since(t0)} }, 200*time.Millisecond,
					func(err error) { evs <- event{k, "exit", err, time.Since(t0)} })
			}
			tc.act(ss[tc.who])
			got := map[string]event{}
			for len(got) < 4 {
				select {
				case e := <-evs:
					got[fmt.Sprintf("%d %s", e.k, e.what)] = e
				case <-time.After(10 * time.Second):
					t.Fatalf("after 10s only %v", got)
				}
			}
			for key, e := range got {
				for _, w := range tc.wants {
					if !strings.Contains(e.err.Error(), w) {
						t.Errorf("%s: error %q does not say %q", key, e.err, w)
					}
				}
				if e.what == "exit" && e.at < 200*time.Millisecond {
					t.Errorf("%s after %s, before the grace of 200ms", key, e.at)
				}
				t.Logf("%s after %s: %v", key, e.at.Round(time.Millisecond), e.err)
			}
			for _, s := range ss {
				s.Close()
			}
		})
	}
	t.Run("silent", func(t *testing.T) {
		// A process that says hello and then nothing (hung): process 0 takes it for dead after
		// Silence.
		addr := freeAddr(t)
		r := rdzv(addr, 0, 2, 1)
		r.Silence = 300 * time.Millisecond
		var s *Session
		var err error
		done := make(chan struct{})
		go func() { s, err = Join(r); close(done) }()
		var c net.Conn
		for c == nil {
			c, _ = net.Dial("tcp", addr)
			time.Sleep(20 * time.Millisecond)
		}
		defer c.Close()
		b, _ := json.Marshal(msg{Type: "hello", Rank: 1, Size: 2, Job: r.Job, GPUs: 1, Host: "hung"})
		c.Write(append(b, '\n'))
		<-done
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		select {
		case <-s.Lost():
		case <-time.After(5 * time.Second):
			t.Fatal("a silent process was not taken for dead within 5s")
		}
		if e := s.Alive(); e == nil || !strings.Contains(e.Error(), "process 1 (hung) is silent for 300ms") {
			t.Errorf("%v", e)
		}
	})
}

// ---------------------------------------------------------------------------------------------
// Separate processes: the test binary re-executes itself as each process of a job.

const childEnv = "FEWSTEP_RDZV_CHILD" // "rank size addr job mode"

// TestRendezvousChild is a process of TestRendezvousProcesses (skipped when run by itself). Modes:
// "done" joins, passes a barrier and says goodbye; "hold" joins and then blocks as a rank hung in
// a collective would, with Watch armed to exit with status 3 when a process is lost.
func TestRendezvousChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		t.Skip("a child of TestRendezvousProcesses")
	}
	f := strings.Fields(spec)
	rank, _ := strconv.Atoi(f[0])
	size, _ := strconv.Atoi(f[1])
	r := Rendezvous{Addr: f[2], Rank: rank, Size: size, Job: f[3], GPUs: rank + 1, Host: "child" + f[0],
		Timeout: 3 * time.Second, Heartbeat: 50 * time.Millisecond, Silence: 5 * time.Second,
		ID: func() ([]byte, error) { return []byte("id"), nil }}
	s, err := Join(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	fmt.Printf("joined %d %d %d %v %s\n", s.Rank, s.First, s.Ranks, s.GPUs, s.ID)
	switch f[4] {
	case "done":
		if err := s.Barrier(); err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(2)
		}
		s.Close()
		os.Exit(0)
	case "hold":
		s.Watch(func(err error) { fmt.Fprintln(os.Stderr, "abort:", err) }, 300*time.Millisecond,
			func(err error) { fmt.Fprintln(os.Stderr, "exit:", err); os.Exit(3) })
		select {} // a collective that never ends
	}
}

type child struct {
	cmd          *exec.Cmd
	stdout       *bufio.Scanner
	stderr       bytes.Buffer
	exited       chan struct{}
	exitAt       time.Time
	code         int
	joined       chan string
	firstStdline string
}

func startChild(t *testing.T, rank, size int, addr, job, mode string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRendezvousChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d %d %s %s %s", childEnv, rank, size, addr, job, mode))
	c := &child{cmd: cmd, exited: make(chan struct{}), joined: make(chan string, 1)}
	cmd.Stderr = &c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "joined") {
				c.joined <- sc.Text()
			}
		}
		cmd.Wait()
		c.exitAt = time.Now()
		c.code = cmd.ProcessState.ExitCode()
		close(c.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.exited
	})
	return c
}

func (c *child) wait(t *testing.T, d time.Duration) bool {
	select {
	case <-c.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// TestRendezvousProcesses: the rendezvous between separate processes on the loopback: all arrive
// (every process learns its first global rank), one never arrives (every other exits with the
// timeout naming host:port and the missing process), another job on one node (every process's
// error names it), and a process killed mid-run: the others, blocked as in a collective, abort and
// exit with an error naming it within seconds.
func TestRendezvousProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts processes")
	}
	t.Run("arrive", func(t *testing.T) {
		addr := freeAddr(t)
		var cs []*child
		for k := 0; k < 3; k++ {
			cs = append(cs, startChild(t, k, 3, addr, "job1", "done"))
		}
		for k, c := range cs {
			if !c.wait(t, 20*time.Second) || c.code != 0 {
				t.Fatalf("process %d: exit %d: %s", k, c.code, c.stderr.String())
			}
			want := fmt.Sprintf("joined %d %d 6 [1 2 3] id", k, []int{0, 1, 3}[k])
			if got := <-c.joined; got != want {
				t.Errorf("process %d printed %q, want %q", k, got, want)
			}
		}
	})
	t.Run("missing", func(t *testing.T) {
		addr := freeAddr(t)
		cs := []*child{startChild(t, 0, 3, addr, "job1", "done"), startChild(t, 2, 3, addr, "job1", "done")}
		for i, c := range cs {
			if !c.wait(t, 20*time.Second) {
				t.Fatalf("process %d still runs after 20s (timeout 3s)", []int{0, 2}[i])
			}
			if e := c.stderr.String(); c.code != 2 || !strings.Contains(e, "rendezvous at "+addr) || !strings.Contains(e, "process(es) 1 of 3 did not arrive within 3s") {
				t.Errorf("process %d: exit %d: %s; want the timeout naming %s and process 1", []int{0, 2}[i], c.code, e, addr)
			}
		}
	})
	t.Run("another job", func(t *testing.T) {
		addr := freeAddr(t)
		cs := []*child{startChild(t, 0, 2, addr, "job1", "done"), startChild(t, 1, 2, addr, "job2", "done")}
		for k, c := range cs {
			if !c.wait(t, 20*time.Second) {
				t.Fatalf("process %d still runs after 20s", k)
			}
			if e := c.stderr.String(); c.code != 2 || !strings.Contains(e, "process 1 (child1) runs another job than process 0 (child0): job hash job2 vs job1") {
				t.Errorf("process %d: exit %d: %s", k, c.code, e)
			}
		}
	})
	for _, victim := range []int{1, 0} {
		t.Run(fmt.Sprintf("kill process %d", victim), func(t *testing.T) {
			addr := freeAddr(t)
			var cs []*child
			for k := 0; k < 3; k++ {
				cs = append(cs, startChild(t, k, 3, addr, "job1", "hold"))
			}
			for k, c := range cs {
				select {
				case <-c.joined:
				case <-time.After(20 * time.Second):
					t.Fatalf("process %d did not join: %s", k, c.stderr.String())
				}
			}
			time.Sleep(200 * time.Millisecond) // training under way
			t0 := time.Now()
			cs[victim].cmd.Process.Signal(syscall.SIGKILL)
			for k, c := range cs {
				if k == victim {
					continue
				}
				if !c.wait(t, 15*time.Second) {
					t.Fatalf("process %d still blocked 15s after process %d was killed", k, victim)
				}
				e := c.stderr.String()
				if c.code != 3 || !strings.Contains(e, fmt.Sprintf("process %d (", victim)) || !strings.Contains(e, "disconnected without finishing") {
					t.Errorf("process %d: exit %d: %s; want exit 3 naming process %d", k, c.code, e, victim)
				}
				t.Logf("process %d exited %s after the kill: %s", k, c.exitAt.Sub(t0).Round(time.Millisecond), strings.TrimSpace(e))
			}
		})
	}
}

// TestBarrierThenClose: process 0 reaches the barrier first and closes the session the moment it
// passes, as a job's last barrier does; the last arrival is counted by process 0's reader. Every
// other process must still be released (CI once saw one time out: process 0 released itself,
// closed the connections, and only then tried to release the others).
func TestBarrierThenClose(t *testing.T) {
	for round := 0; round < 10; round++ {
		addr := freeAddr(t)
		var rs []Rendezvous
		for k := 0; k < 3; k++ {
			r := rdzv(addr, k, 3, 1)
			r.Timeout = 2 * time.Second
			rs = append(rs, r)
		}
		ss, errs := joinAll(rs, 0)
		for k, err := range errs {
			if err != nil {
				t.Fatalf("round %d process %d: %v", round, k, err)
			}
		}
		var wg sync.WaitGroup
		for k, s := range ss {
			wg.Add(1)
			go func(k int, s *Session) {
				defer wg.Done()
				if k > 0 {
					time.Sleep(time.Duration(k) * 5 * time.Millisecond) // process 0 waits first
				}
				if err := s.Barrier(); err != nil {
					t.Errorf("round %d process %d: %v", round, k, err)
				}
				s.Close()
			}(k, s)
		}
		wg.Wait()
		if t.Failed() {
			return
		}
	}
}
