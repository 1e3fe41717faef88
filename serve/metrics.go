package serve

import (
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// metrics are the counters /metrics reports in Prometheus' text format.
type metrics struct {
	queued atomic.Int64 // requests admitted and not yet taken into a generation

	mu        sync.Mutex
	codes     map[int]int64 // answers by HTTP status (499: the client left)
	batches   int64
	videos    int64
	genSec    float64
	latBucket []int64 // request latency histogram over latencyBuckets (cumulative at output)
	latSum    float64
	latCount  int64
}

var latencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

func (m *metrics) code(c int) {
	m.mu.Lock()
	if m.codes == nil {
		m.codes = map[int]int64{}
	}
	m.codes[c]++
	m.mu.Unlock()
}

func (m *metrics) batch(videos int) {
	m.mu.Lock()
	m.batches++
	m.mu.Unlock()
}

func (m *metrics) generated(videos int, d time.Duration) {
	m.mu.Lock()
	m.videos += int64(videos)
	m.genSec += d.Seconds()
	m.mu.Unlock()
}

func (m *metrics) latency(d time.Duration) {
	m.mu.Lock()
	if m.latBucket == nil {
		m.latBucket = make([]int64, len(latencyBuckets))
	}
	for i, b := range latencyBuckets {
		if d.Seconds() <= b {
			m.latBucket[i]++
			break
		}
	}
	m.latSum += d.Seconds()
	m.latCount++
	m.mu.Unlock()
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	m := &s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP fewstep_requests_total Answered requests by HTTP status (499: the client left).\n# TYPE fewstep_requests_total counter\n")
	codes := make([]int, 0, len(m.codes))
	for c := range m.codes {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		fmt.Fprintf(w, "fewstep_requests_total{code=\"%d\"} %d\n", c, m.codes[c])
	}
	fmt.Fprintf(w, "# HELP fewstep_queue_length Requests waiting for a generation.\n# TYPE fewstep_queue_length gauge\nfewstep_queue_length %d\n", m.queued.Load())
	fmt.Fprintf(w, "# HELP fewstep_batches_total Generations run.\n# TYPE fewstep_batches_total counter\nfewstep_batches_total %d\n", m.batches)
	fmt.Fprintf(w, "# HELP fewstep_videos_total Videos generated.\n# TYPE fewstep_videos_total counter\nfewstep_videos_total %d\n", m.videos)
	fmt.Fprintf(w, "# HELP fewstep_generate_seconds_total Time spent generating.\n# TYPE fewstep_generate_seconds_total counter\nfewstep_generate_seconds_total %g\n", m.genSec)
	fmt.Fprintf(w, "# HELP fewstep_request_seconds Latency of answered requests, arrival to answer.\n# TYPE fewstep_request_seconds histogram\n")
	var cum int64
	for i, b := range latencyBuckets {
		if m.latBucket != nil {
			cum += m.latBucket[i]
		}
		fmt.Fprintf(w, "fewstep_request_seconds_bucket{le=\"%g\"} %d\n", b, cum)
	}
	fmt.Fprintf(w, "fewstep_request_seconds_bucket{le=\"+Inf\"} %d\nfewstep_request_seconds_sum %g\nfewstep_request_seconds_count %d\n", m.latCount, m.latSum, m.latCount)
	fmt.Fprintf(w, "# HELP fewstep_draining 1 while the server shuts down.\n# TYPE fewstep_draining gauge\nfewstep_draining %d\n", map[bool]int{true: 1}[s.draining.Load()])
}
