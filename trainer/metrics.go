package trainer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/fewstep/fewstep/tensorboard"
	"github.com/schollz/progressbar/v3"
)

// metricsLog is run/metrics.jsonl: one JSON object per logged step,
// {"step": n, "elapsed_s": …, "loss": …, "lr/student": …, …}, keys sorted, means over the steps since
// the previous line (every key: docs/metrics.md). Opening it for a resumed run drops the lines past
// the resumed step. With train.tensorboard every line also goes to a TensorBoard event file (tb).
type metricsLog struct {
	f       *os.File
	tb      *tensorboard.Writer
	tbStart time.Time
}

func openMetrics(path string, resumedAt int) (*metricsLog, error) {
	var keep [][]byte
	if b, err := os.ReadFile(path); err == nil && resumedAt > 0 {
		for _, line := range bytes.Split(b, []byte("\n")) {
			var rec struct {
				Step int `json:"step"`
			}
			if len(line) > 0 && json.Unmarshal(line, &rec) == nil && rec.Step <= resumedAt {
				keep = append(keep, line)
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	for _, l := range keep {
		f.Write(append(l, '\n'))
	}
	return &metricsLog{f: f}, nil
}

func (l *metricsLog) write(step int, elapsed float64, m map[string]float64) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, `{"step":%d,"elapsed_s":%.3f`, step, elapsed)
	for _, k := range keys {
		v := m[k]
		kb, _ := json.Marshal(k)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			fmt.Fprintf(&b, `,%s:"%v"`, kb, v) // JSON has no NaN: keep it visible as a string
		} else {
			fmt.Fprintf(&b, `,%s:%.6g`, kb, v)
		}
	}
	b.WriteString("}\n")
	if _, err := l.f.WriteString(b.String()); err != nil {
		return err
	}
	if l.tb != nil {
		return l.tb.Scalars(step, m, l.tbStart.Add(time.Duration(elapsed*float64(time.Second))))
	}
	return nil
}

func (l *metricsLog) Close() error {
	if l.tb != nil {
		l.tb.Close()
	}
	return l.f.Close()
}

// meanAcc averages metrics over steps, per key over the steps that reported it.
type meanAcc struct {
	sum map[string]float64
	n   map[string]int
}

func (a *meanAcc) add(m map[string]float64) {
	if a.sum == nil {
		a.sum, a.n = map[string]float64{}, map[string]int{}
	}
	for k, v := range m {
		a.sum[k] += v
		a.n[k]++
	}
}

func (a *meanAcc) mean() map[string]float64 {
	out := map[string]float64{}
	for k, v := range a.sum {
		out[k] = v / float64(a.n[k])
	}
	return out
}

// BarThrottle is the least time between redraws of a progress bar writing to w: tty on a terminal,
// 5 s into a file or pipe, where every redraw stays in the log as one more line.
func BarThrottle(w io.Writer, tty time.Duration) time.Duration {
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			return tty
		}
	}
	return 5 * time.Second
}

// bar is the progress bar: step count, the last loss, the student's lr, steps/s and the time left at
// that rate (the trainer's rate over this run's steps: the bar's own prediction counted the steps of
// a resumed run as done in no time, and read 0s left at the first steps).
type bar struct {
	pb        *progressbar.ProgressBar
	total     int
	loss      float64
	lr        float64
	studentLR bool // lr is the student's
}

func newBar(w io.Writer, total, done int, name string) *bar {
	if w == nil {
		return &bar{}
	}
	pb := progressbar.NewOptions(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(name),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(24),
		progressbar.OptionThrottle(BarThrottle(w, 200*time.Millisecond)),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	)
	pb.Set(done)
	return &bar{pb: pb, total: total, loss: math.NaN()}
}

func (b *bar) update(step int, m map[string]float64, rate float64) {
	if b.pb == nil {
		return
	}
	if v, ok := m["loss"]; ok {
		b.loss = v
	}
	// the student's lr; the critic's only until the student has one (on a step where only the critic
	// steps, dmd's generator_update_ratio > 1, the bar showed the critic's lr in its place)
	if v, ok := m["lr/student"]; ok {
		b.lr, b.studentLR = v, true
	} else if v, ok := m["lr/critic"]; ok && !b.studentLR {
		b.lr = v
	}
	b.pb.Describe(b.describe(step, rate))
	b.pb.Set(step)
}

// describe is the bar's text at step, rate steps/s: loss, lr, rate and the time left at that rate.
func (b *bar) describe(step int, rate float64) string {
	left := ""
	if rate > 0 && step < b.total {
		left = fmt.Sprintf(", %s left", (time.Duration(float64(b.total-step)/rate) * time.Second).String())
	}
	loss := "-" // no loss yet: dmd's first step trains the critic alone
	if !math.IsNaN(b.loss) {
		loss = fmt.Sprintf("%.4f", b.loss)
	}
	return fmt.Sprintf("loss %s lr %.2e %.2f steps/s%s", loss, b.lr, rate, left)
}

func (b *bar) finish() {
	if b.pb != nil {
		b.pb.Finish()
	}
}

// stop leaves the bar where it is (an interrupted run) and ends its line.
func (b *bar) stop() {
	if b.pb != nil {
		b.pb.Exit()
	}
}
