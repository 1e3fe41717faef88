package trainer

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/tensorboard"
)

// Run draws RUN/plots/*.png at each checkpoint and, with train.tensorboard, writes every
// metrics.jsonl line as a TensorBoard event with the same step and values.
func TestRunPlotsAndTensorBoard(t *testing.T) {
	dir := t.TempDir()
	job := toyJob(dir, 12)
	job.Train.CkptEvery = 6
	job.Train.TensorBoard = true
	tr, _ := newToy(t, job)
	if err := tr.Run(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"losses.png", "grad_norm.png", "lr.png", "other.png"} {
		if st, err := os.Stat(filepath.Join(dir, "plots", f)); err != nil || st.Size() < 1000 {
			t.Errorf("plots/%s: %v", f, err)
		}
	}
	ms, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(ms)), "\n")
	evf, _ := filepath.Glob(filepath.Join(dir, "tensorboard", "events.out.tfevents.*"))
	if len(evf) != 1 {
		t.Fatalf("event files %v", evf)
	}
	b, err := os.ReadFile(evf[0])
	if err != nil {
		t.Fatal(err)
	}
	evs, err := tensorboard.Read(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(lines)+1 {
		t.Fatalf("%d events for %d metrics lines (+ the file version)", len(evs), len(lines))
	}
	for i, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		e := evs[i+1]
		if float64(e.Step) != rec["step"].(float64) {
			t.Errorf("line %d: event step %d, metrics step %v", i, e.Step, rec["step"])
		}
		for k, v := range rec {
			if k == "step" || k == "elapsed_s" {
				continue
			}
			x, ok := v.(float64)
			// metrics.jsonl keeps 6 significant digits, the event a float32
			if got, has := e.Scalars[k]; !has || ok && math.Abs(float64(got)-x) > 1e-5*math.Abs(x) {
				t.Errorf("line %d: %s = %v in the event, %v in metrics.jsonl", i, k, got, v)
			}
		}
	}
}
