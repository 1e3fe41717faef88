package dist

// The rendezvous: a small TCP protocol on process 0 that every process of a job joins before
// training (docs/multi-gpu.md). Each process sends a hello (its process rank, the number of
// processes it was told, the hash of its resolved job, the number of GPUs it drives); process 0
// checks that they agree and answers every one with the GPU counts of all processes (from which
// each finds its first global rank) and NCCL's unique id, or with the same error for all. The
// connections then stay open as a liveness channel: heartbeats both ways; a process that
// disconnects without saying goodbye, or falls silent, is dead, and process 0 tells the others,
// which abort their communicators and exit instead of waiting forever in a collective.
//
// Messages are JSON lines.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rendezvous is what a process brings to the rendezvous.
type Rendezvous struct {
	Addr string // host:port of process 0 (it listens on every interface at that port)
	Rank int    // this process
	Size int    // the number of processes this process was told
	Job  string // JobHash of the resolved job: every process must run the same one
	GPUs int    // ranks (GPUs, or CPU ranks) this process drives, ≥ 1
	// Timeout bounds the wait for every process to arrive (default 5 minutes).
	Timeout time.Duration
	// Heartbeat is the period of the liveness messages (default 1 s); a peer silent for Silence
	// (default 20 heartbeats) is taken for dead.
	Heartbeat, Silence time.Duration
	// ID makes NCCL's unique id on process 0 once every process has arrived (nil: no id, CPU ranks).
	ID func() ([]byte, error)
	// Host names this process in messages (default: os.Hostname).
	Host string
}

// JobHash is a short hash of a resolved job's canonical text (the parts that must agree between
// processes).
func JobHash(canonical []byte) string {
	h := sha256.Sum256(canonical)
	return hex.EncodeToString(h[:6])
}

// msg is one line of the protocol.
type msg struct {
	Type  string `json:"type"` // hello, welcome, error, hb, bye, fail, barrier
	Rank  int    `json:"rank,omitempty"`
	Size  int    `json:"size,omitempty"`
	Job   string `json:"job,omitempty"`
	GPUs  int    `json:"gpus,omitempty"`
	Host  string `json:"host,omitempty"`
	All   []int  `json:"all,omitempty"` // welcome: GPUs of every process, by rank
	ID    []byte `json:"id,omitempty"`  // welcome: NCCL's unique id
	Error string `json:"error,omitempty"`
	N     int    `json:"n,omitempty"` // barrier number
}

// peer is one connection with its writer lock.
type peer struct {
	rank int
	host string
	gpus int
	conn net.Conn
	rd   *bufio.Reader
	wmu  sync.Mutex
	bye  bool // said goodbye (under Session.mu)
}

func (p *peer) send(m msg, timeout time.Duration) error {
	b, _ := json.Marshal(m)
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err := p.conn.Write(append(b, '\n'))
	return err
}

func (p *peer) recv(deadline time.Time) (msg, error) {
	var m msg
	p.conn.SetReadDeadline(deadline)
	line, err := p.rd.ReadBytes('\n')
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(line, &m); err != nil {
		return m, fmt.Errorf("bad message %q: %w", strings.TrimSpace(string(line)), err)
	}
	return m, nil
}

// Session is a process's membership of a job after the rendezvous.
type Session struct {
	Rank, Size int    // process rank, number of processes
	First      int    // this process's first global rank
	Ranks      int    // global ranks in all (the GPUs of every process)
	GPUs       []int  // ranks of each process
	ID         []byte // NCCL's unique id (nil without Rendezvous.ID)

	r     Rendezvous
	peers []*peer // process 0: every other process (by rank, nil for 0); others: process 0 at [0]

	mu      sync.Mutex
	lost    error
	lostC   chan struct{}
	closed  bool
	closedC chan struct{}
	barrier map[int]int           // process 0: arrivals per barrier number
	release map[int]chan struct{} // barrier number → closed when every process has arrived
	nextB   int
}

func (r *Rendezvous) defaults() {
	if r.Timeout <= 0 {
		r.Timeout = 5 * time.Minute
	}
	if r.Heartbeat <= 0 {
		r.Heartbeat = time.Second
	}
	if r.Silence <= 0 {
		r.Silence = 20 * r.Heartbeat
	}
	if r.Host == "" {
		r.Host, _ = os.Hostname()
	}
}

// Join takes part in the rendezvous: process 0 listens at Addr's port, the others connect to it
// (retrying until the timeout, so the order of starting does not matter). It returns when every
// process has arrived and agreed, or with an error that every process sees the same way.
func Join(r Rendezvous) (*Session, error) {
	r.defaults()
	if r.Size < 1 || r.Rank < 0 || r.Rank >= r.Size {
		return nil, fmt.Errorf("rendezvous: process %d of %d", r.Rank, r.Size)
	}
	if r.GPUs < 1 {
		return nil, fmt.Errorf("rendezvous: process %d drives %d ranks, want at least 1", r.Rank, r.GPUs)
	}
	s := &Session{Rank: r.Rank, Size: r.Size, r: r, lostC: make(chan struct{}), closedC: make(chan struct{}),
		barrier: map[int]int{}, release: map[int]chan struct{}{}}
	if r.Size == 1 {
		s.GPUs, s.Ranks = []int{r.GPUs}, r.GPUs
		if r.ID != nil {
			id, err := r.ID()
			if err != nil {
				return nil, err
			}
			s.ID = id
		}
		return s, nil
	}
	var err error
	if r.Rank == 0 {
		err = s.serve()
	} else {
		err = s.join()
	}
	if err != nil {
		s.closeConns()
		return nil, err
	}
	go s.heartbeats()
	for _, p := range s.peers {
		if p != nil {
			go s.read(p)
		}
	}
	return s, nil
}

// serve is process 0's side: accept until every process has said hello or the timeout.
func (s *Session) serve() error {
	r := s.r
	_, port, err := net.SplitHostPort(r.Addr)
	if err != nil {
		return fmt.Errorf("rendezvous address %q: %w", r.Addr, err)
	}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return fmt.Errorf("rendezvous: process 0 cannot listen at %s (port %s): %w", r.Addr, port, err)
	}
	defer ln.Close()
	deadline := time.Now().Add(r.Timeout)
	s.peers = make([]*peer, r.Size)
	var bad error // the first disagreement; every process is told
	var extra []*peer
	type hello struct {
		p   *peer
		m   msg
		err error
	}
	hellos := make(chan hello)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // accept, and read each one's hello in its own goroutine
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				p := &peer{conn: c, rd: bufio.NewReader(c)}
				m, err := p.recv(deadline)
				select {
				case hellos <- hello{p, m, err}:
				case <-stop:
					c.Close()
				}
			}()
		}
	}()
	arrived := 1
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for arrived < r.Size {
		select {
		case h := <-hellos:
			if h.err != nil || h.m.Type != "hello" {
				h.p.conn.Close() // not one of ours (a port scan, a half-open connection)
				continue
			}
			m, p := h.m, h.p
			p.rank, p.host, p.gpus = m.Rank, m.Host, m.GPUs
			switch {
			case m.Size != r.Size:
				bad = cmpOr(bad, fmt.Errorf("process %d (%s) was told the job has %d processes, process 0 (%s) was told %d: give every node the same NNODES/WORLD_SIZE (or Slurm/MPI task count)", m.Rank, m.Host, m.Size, r.Host, r.Size))
			case m.Job != r.Job:
				bad = cmpOr(bad, fmt.Errorf("process %d (%s) runs another job than process 0 (%s): job hash %s vs %s; give every node the same config, --set overrides and flags", m.Rank, m.Host, r.Host, m.Job, r.Job))
			case m.Rank <= 0 || m.Rank >= r.Size:
				bad = cmpOr(bad, fmt.Errorf("process %d (%s) has a rank outside 1..%d", m.Rank, m.Host, r.Size-1))
			case s.peers[m.Rank] != nil:
				bad = cmpOr(bad, fmt.Errorf("two processes claim rank %d (%s and %s)", m.Rank, s.peers[m.Rank].host, m.Host))
			case m.GPUs < 1:
				bad = cmpOr(bad, fmt.Errorf("process %d (%s) drives no GPU", m.Rank, m.Host))
			}
			if m.Rank > 0 && m.Rank < r.Size && s.peers[m.Rank] == nil {
				s.peers[m.Rank] = p
				arrived++
			} else {
				extra = append(extra, p)
			}
			if bad != nil { // tell whoever is here at once; later arrivals hear it when they come
				s.tellAll(extra, msg{Type: "error", Error: bad.Error()})
			}
		case <-timer.C:
			var missing []string
			for k := 1; k < r.Size; k++ {
				if s.peers[k] == nil {
					missing = append(missing, strconv.Itoa(k))
				}
			}
			err := fmt.Errorf("rendezvous at %s (process 0 on %s): process(es) %s of %d did not arrive within %s", r.Addr, r.Host, strings.Join(missing, ", "), r.Size, r.Timeout)
			if bad != nil {
				err = fmt.Errorf("%w; and %w", bad, err)
			}
			s.tellAll(extra, msg{Type: "error", Error: err.Error()})
			return err
		}
	}
	if bad != nil {
		err := fmt.Errorf("rendezvous at %s: %w", r.Addr, bad)
		s.tellAll(extra, msg{Type: "error", Error: err.Error()})
		return err
	}
	for _, p := range extra {
		p.conn.Close()
	}
	s.GPUs = make([]int, r.Size)
	s.GPUs[0] = r.GPUs
	for k := 1; k < r.Size; k++ {
		s.GPUs[k] = s.peers[k].gpus
	}
	s.place()
	if r.ID != nil {
		id, err := r.ID()
		if err != nil {
			err = fmt.Errorf("rendezvous: process 0 could not make NCCL's unique id: %w", err)
			s.tellAll(nil, msg{Type: "error", Error: err.Error()})
			return err
		}
		s.ID = id
	}
	var first error
	for _, p := range s.peers[1:] {
		if err := p.send(msg{Type: "welcome", All: s.GPUs, ID: s.ID}, r.Timeout); err != nil && first == nil {
			first = fmt.Errorf("rendezvous: welcoming process %d (%s): %w", p.rank, p.host, err)
		}
	}
	return first
}

// cmpOr is a if a is set, else b.
func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// tellAll sends m to every connected process (and extra ones) and closes them.
func (s *Session) tellAll(extra []*peer, m msg) {
	for _, p := range append(append([]*peer(nil), s.peers...), extra...) {
		if p != nil {
			p.send(m, time.Second)
			p.conn.Close()
		}
	}
}

// place computes this process's first global rank and the total from GPUs.
func (s *Session) place() {
	s.First, s.Ranks = 0, 0
	for k, g := range s.GPUs {
		if k < s.Rank {
			s.First += g
		}
		s.Ranks += g
	}
}

// join is the side of processes 1..Size-1: connect (retrying), say hello, wait for the answer.
func (s *Session) join() error {
	r := s.r
	deadline := time.Now().Add(r.Timeout)
	var c net.Conn
	var last error
	for {
		d := net.Dialer{Timeout: min(5*time.Second, time.Until(deadline))}
		var err error
		if c, err = d.Dial("tcp", r.Addr); err == nil {
			break
		}
		last = err
		if time.Now().Add(200 * time.Millisecond).After(deadline) {
			return fmt.Errorf("rendezvous: process %d (%s) could not reach process 0 at %s within %s (is process 0 running, and MASTER_ADDR/MASTER_PORT right?): %v", r.Rank, r.Host, r.Addr, r.Timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
	p := &peer{rank: 0, conn: c, rd: bufio.NewReader(c), host: r.Addr}
	s.peers = []*peer{p}
	if err := p.send(msg{Type: "hello", Rank: r.Rank, Size: r.Size, Job: r.Job, GPUs: r.GPUs, Host: r.Host}, r.Timeout); err != nil {
		return fmt.Errorf("rendezvous: process %d: hello to %s: %w", r.Rank, r.Addr, err)
	}
	// Process 0 answers when all have arrived, at the latest at its own deadline, which may be
	// up to a timeout later than ours.
	m, err := p.recv(time.Now().Add(r.Timeout + 10*time.Second))
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("rendezvous at %s: process %d (%s) got no answer from process 0 within %s: other processes have not arrived", r.Addr, r.Rank, r.Host, r.Timeout)
		}
		return fmt.Errorf("rendezvous at %s: process %d (%s): process 0 closed the connection without an answer: %v", r.Addr, r.Rank, r.Host, err)
	}
	switch m.Type {
	case "welcome":
		if len(m.All) != r.Size {
			return fmt.Errorf("rendezvous at %s: welcome for %d processes, want %d", r.Addr, len(m.All), r.Size)
		}
		s.GPUs, s.ID = m.All, m.ID
		s.place()
		return nil
	case "error":
		return fmt.Errorf("process %d (%s): %s", r.Rank, r.Host, m.Error)
	}
	return fmt.Errorf("rendezvous at %s: unexpected answer %q", r.Addr, m.Type)
}

// ---------------------------------------------------------------------------------------------
// After the rendezvous: liveness, failures, barriers, goodbye.

// heartbeats sends a heartbeat to every peer each Heartbeat until Close or a loss.
func (s *Session) heartbeats() {
	t := time.NewTicker(s.r.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-s.closedC:
			return
		case <-s.lostC:
			return
		case <-t.C:
		}
		for _, p := range s.peers {
			if p != nil {
				p.send(msg{Type: "hb"}, s.r.Silence)
			}
		}
	}
}

// read handles one peer's messages until it leaves.
func (s *Session) read(p *peer) {
	who := fmt.Sprintf("process %d (%s)", p.rank, p.host)
	for {
		m, err := p.recv(time.Now().Add(s.r.Silence))
		if err != nil {
			s.mu.Lock()
			done := p.bye || s.closed
			s.mu.Unlock()
			if done {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.lose(p.rank, fmt.Errorf("%s is silent for %s: taken for dead", who, s.r.Silence))
			} else {
				s.lose(p.rank, fmt.Errorf("%s disconnected without finishing (it died or was killed): %v", who, err))
			}
			return
		}
		switch m.Type {
		case "hb":
		case "bye":
			s.mu.Lock()
			p.bye = true
			s.mu.Unlock()
		case "fail": // a process failed; on process 0 from that process, on the others relayed
			s.lose(m.Rank, errors.New(m.Error))
			return
		case "barrier":
			s.arrive(m.N)
		}
	}
}

// lose records the loss of process rank (the first loss wins) and, on process 0, tells the others.
func (s *Session) lose(rank int, err error) {
	s.mu.Lock()
	if s.lost != nil || s.closed {
		s.mu.Unlock()
		return
	}
	s.lost = err
	close(s.lostC)
	s.mu.Unlock()
	if s.Rank == 0 {
		for _, p := range s.peers {
			if p != nil && p.rank != rank {
				p.send(msg{Type: "fail", Rank: rank, Error: err.Error()}, time.Second)
			}
		}
	}
}

// Alive is nil while every process is there, else the error of the first loss.
func (s *Session) Alive() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lost
}

// Lost is closed when a process is lost.
func (s *Session) Lost() <-chan struct{} { return s.lostC }

// Fail tells every process that this one failed with err (they abort instead of waiting for it).
func (s *Session) Fail(err error) {
	e := fmt.Errorf("process %d (%s) failed: %w", s.Rank, s.r.Host, err)
	if s.Rank == 0 {
		s.lose(0, e)
		return
	}
	if len(s.peers) > 0 {
		s.peers[0].send(msg{Type: "fail", Rank: s.Rank, Error: e.Error()}, time.Second)
	}
}

// Barrier returns when every process has called it (the n-th call of each), or with an error when
// a process is lost or the timeout passes.
func (s *Session) Barrier() error {
	if s.Size == 1 {
		return nil
	}
	s.mu.Lock()
	s.nextB++
	n := s.nextB
	ch := s.releaseLocked(n)
	s.mu.Unlock()
	if s.Rank == 0 {
		s.arrive(n)
	} else if err := s.peers[0].send(msg{Type: "barrier", N: n}, s.r.Timeout); err != nil {
		return fmt.Errorf("barrier %d: %w", n, err)
	}
	select {
	case <-ch:
		return nil
	case <-s.lostC:
		return s.Alive()
	case <-time.After(s.r.Timeout):
		return fmt.Errorf("barrier %d: not every process arrived within %s", n, s.r.Timeout)
	}
}

func (s *Session) releaseLocked(n int) chan struct{} {
	ch, ok := s.release[n]
	if !ok {
		ch = make(chan struct{})
		s.release[n] = ch
	}
	return ch
}

// arrive counts one arrival at barrier n: on process 0 it releases every process once all are
// there; on the others it is process 0's release.
func (s *Session) arrive(n int) {
	s.mu.Lock()
	if s.Rank != 0 {
		close(s.releaseLocked(n))
		s.mu.Unlock()
		return
	}
	s.barrier[n]++
	if s.barrier[n] < s.Size {
		s.mu.Unlock()
		return
	}
	delete(s.barrier, n)
	s.mu.Unlock()
	// The others are told before process 0 is released: its Barrier may return into Close, which
	// would cut the connections under a release still to be sent (when the last arrival is counted
	// here on a reader goroutine, not in process 0's own Barrier).
	for _, p := range s.peers {
		if p != nil {
			p.send(msg{Type: "barrier", N: n}, s.r.Timeout)
		}
	}
	s.mu.Lock()
	close(s.releaseLocked(n))
	s.mu.Unlock()
}

// Watch arms the bounded exit: when a process is lost, abort(err) is called at once (abort the
// communicators, so ranks blocked in collectives wake up) and, if the session is not closed within
// grace, exit(err) (the CLI prints the error and exits with a failure). Close disarms it.
func (s *Session) Watch(abort func(error), grace time.Duration, exit func(error)) {
	if s.Size == 1 {
		return
	}
	go func() {
		select {
		case <-s.closedC:
			return
		case <-s.lostC:
		}
		err := s.Alive()
		if abort != nil {
			abort(err)
		}
		select {
		case <-s.closedC:
		case <-time.After(grace):
			exit(err)
		}
	}()
}

// Close says goodbye to the other processes (a later disconnection is not a death) and closes
// the connections.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closedC)
	s.mu.Unlock()
	for _, p := range s.peers {
		if p != nil {
			p.send(msg{Type: "bye"}, time.Second)
		}
	}
	s.closeConns()
	return nil
}

func (s *Session) closeConns() {
	for _, p := range s.peers {
		if p != nil {
			p.conn.Close()
		}
	}
}
