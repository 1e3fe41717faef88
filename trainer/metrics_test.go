package trainer

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Progress bars redraw often only on character devices (terminals); into a buffer, a pipe or a
// log file every redraw would stay as a line, so they redraw every 5 s there.
func TestBarThrottle(t *testing.T) {
	const tty = 100 * time.Millisecond
	if got := BarThrottle(&bytes.Buffer{}, tty); got != 5*time.Second {
		t.Errorf("buffer: %v, want 5s", got)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "log.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := BarThrottle(f, tty); got != 5*time.Second {
		t.Errorf("regular file: %v, want 5s", got)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if got := BarThrottle(w, tty); got != 5*time.Second {
		t.Errorf("pipe: %v, want 5s", got)
	}
	if d, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil { // a character device, like a terminal
		defer d.Close()
		if got := BarThrottle(d, tty); got != tty {
			t.Errorf("%s: %v, want %v", os.DevNull, got, tty)
		}
	}
}

// The bar's lr is the student's: a step where only the critic steps (dmd with generator_update_ratio
// 2) carries lr/critic alone and left the critic's lr on the bar every other step; a run whose
// student has not stepped yet shows the critic's.
func TestBarShowsStudentLR(t *testing.T) {
	b := newBar(&bytes.Buffer{}, 10, 0, "test")
	b.update(1, map[string]float64{"lr/critic": 2e-4, "critic_loss": 0.3}, 1)
	if b.lr != 2e-4 {
		t.Errorf("before the student steps: lr %g, want the critic's 2e-4", b.lr)
	}
	b.update(2, map[string]float64{"lr/student": 1e-4, "lr/critic": 2e-4, "loss": 1.2}, 1)
	b.update(3, map[string]float64{"lr/critic": 2e-4, "critic_loss": 0.2}, 1)
	if b.lr != 1e-4 || b.loss != 1.2 {
		t.Errorf("after a critic-only step: lr %g, loss %g; want the student's 1e-4 and the last loss 1.2", b.lr, b.loss)
	}
}

// A run resumed at step 100 of 300: the bar predicts nothing itself (it counted the 100 steps as done
// in no time: [0s:0s]) and says the time left at the trainer's rate over this run's steps.
func TestBarResumedTimeLeft(t *testing.T) {
	var w bytes.Buffer
	b := newBar(&w, 300, 100, "test")
	if out := w.String(); !strings.Contains(out, "(100/300)") || regexp.MustCompile(`\[[^\]]*:[^\]]*\]`).MatchString(out) {
		t.Errorf("resumed bar %q: want (100/300) and the time elapsed alone", out)
	}
	b.lr = 1e-4
	if got := b.describe(101, 1.5); !strings.HasPrefix(got, "loss - lr") { // no loss yet (a critic-only first step)
		t.Errorf("before any loss: %q", got)
	}
	b.loss = 0.5
	if got, want := b.describe(101, 1.5), "loss 0.5000 lr 1.00e-04 1.50 steps/s, 2m12s left"; got != want {
		t.Errorf("describe: %q, want %q", got, want)
	}
	if got := b.describe(300, 1.5); strings.Contains(got, "left") {
		t.Errorf("at the last step: %q", got)
	}
}
