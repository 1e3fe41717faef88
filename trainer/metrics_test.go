package trainer

import (
	"bytes"
	"os"
	"path/filepath"
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
