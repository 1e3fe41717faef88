package tensorboard

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The masked CRC-32C of TFRecord: the published check value of CRC-32C ("123456789" → e3069283)
// and the mask of tensorflow/core/lib/hash/crc32c.h.
func TestMaskedCRC(t *testing.T) {
	if c := crc32.Checksum([]byte("123456789"), castagnoli); c != 0xe3069283 {
		t.Fatalf("crc32c check value %08x", c)
	}
	c := uint32(0xe3069283)
	if got, want := maskedCRC([]byte("123456789")), ((c>>15)|(c<<17))+0xa282ead8; got != want {
		t.Fatalf("masked %08x, want %08x", got, want)
	}
}

// What Writer writes decodes back: the file_version record, then each step's scalars with their
// step and wall time; the bytes of one scalar event are those protobuf gives for the same message.
func TestWriteRead(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tb")
	w, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(w.Path), "events.out.tfevents.") {
		t.Errorf("file name %s", w.Path)
	}
	at := time.Unix(1700000000, 250_000_000)
	want := []map[string]float64{{"loss": 0.5, "lr/student": 1e-4}, {"loss": 0.25, "val/fd": math.NaN()}}
	for i, m := range want {
		if err := w.Scalars(10*(i+1), m, at); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(w.Path)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := Read(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 || evs[0].FileVersion != "brain.Event:2" {
		t.Fatalf("events %+v", evs)
	}
	for i, m := range want {
		e := evs[i+1]
		if e.Step != int64(10*(i+1)) || e.WallTime != 1700000000.25 || len(e.Scalars) != len(m) {
			t.Errorf("event %d: %+v", i, e)
		}
		for k, v := range m {
			got, ok := e.Scalars[k]
			if !ok || !(got == float32(v) || math.IsNaN(v) && math.IsNaN(float64(got))) {
				t.Errorf("event %d: %s = %v, want %v", i, k, got, v)
			}
		}
	}
	// Event{wall_time: 2, step: 3, summary {value {tag: "a", simple_value: 1}}} as protoc encodes it
	// (`protoc --encode=Event` on the fields of tensorflow's event.proto and summary.proto, libprotoc
	// 3.21): 09 <8 bytes 2.0> 10 03 2a 0a 0a 08 0a 01 61 15 <4 bytes 1.0f>.
	ref := []byte{0x09, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x10, 0x03, 0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, 'a', 0x15, 0, 0, 0x80, 0x3f}
	if got := (Event{WallTime: 2, Step: 3, Scalars: map[string]float32{"a": 1}}).marshal(); !bytes.Equal(got, ref) {
		t.Errorf("marshal % x, want % x", got, ref)
	}
	// a flipped byte is caught by the data CRC
	b[len(b)-6] ^= 1
	if _, err := Read(bytes.NewReader(b)); err == nil || !strings.Contains(err.Error(), "crc") {
		t.Errorf("corrupt record: %v", err)
	}
	binary.LittleEndian.PutUint64(b[:8], 3) // and a changed length by the length CRC
	if _, err := Read(bytes.NewReader(b)); err == nil || !strings.Contains(err.Error(), "length crc") {
		t.Errorf("corrupt length: %v", err)
	}
}
