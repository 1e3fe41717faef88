// Package tensorboard writes TensorBoard event files (tfevents) of scalar summaries, so that a run's
// metrics (trainer/metrics.go, docs/metrics.md) show in TensorBoard with `train.tensorboard: true`.
//
// The format, encoded by hand here (no protobuf or TensorFlow dependency): a file is a sequence of
// records, each
//
//	uint64 length (little-endian) | uint32 masked crc32c(length bytes) | data | uint32 masked crc32c(data)
//
// where masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 over the Castagnoli CRC, and data is a
// serialized tensorflow.Event: wall_time (1, double), step (2, int64), file_version (3, string;
// the first record, "brain.Event:2") or summary (5, Summary). A Summary is repeated value (1,
// Value); a Value is tag (1, string) and simple_value (2, float).
package tensorboard

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"time"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func maskedCRC(b []byte) uint32 {
	c := crc32.Checksum(b, castagnoli)
	return ((c >> 15) | (c << 17)) + 0xa282ead8
}

// protobuf wire encoding: a key is field<<3 | wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
func appendVarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendKey(b []byte, field, wire int) []byte { return appendVarint(b, uint64(field<<3|wire)) }

func appendBytes(b []byte, field int, p []byte) []byte {
	b = appendKey(b, field, 2)
	b = appendVarint(b, uint64(len(p)))
	return append(b, p...)
}

// Event is the part of tensorflow.Event this package writes and reads.
type Event struct {
	WallTime    float64
	Step        int64
	FileVersion string
	Scalars     map[string]float32 // Summary values: tag → simple_value
}

func (e Event) marshal() []byte {
	var b []byte
	b = appendKey(b, 1, 1)
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(e.WallTime))
	if e.Step != 0 {
		b = appendKey(b, 2, 0)
		b = appendVarint(b, uint64(e.Step))
	}
	if e.FileVersion != "" {
		b = appendBytes(b, 3, []byte(e.FileVersion))
	}
	if len(e.Scalars) > 0 {
		tags := make([]string, 0, len(e.Scalars))
		for t := range e.Scalars {
			tags = append(tags, t)
		}
		sort.Strings(tags)
		var sum []byte
		for _, t := range tags {
			var v []byte
			v = appendBytes(v, 1, []byte(t))
			v = appendKey(v, 2, 5)
			v = binary.LittleEndian.AppendUint32(v, math.Float32bits(e.Scalars[t]))
			sum = appendBytes(sum, 1, v)
		}
		b = appendBytes(b, 5, sum)
	}
	return b
}

// Writer appends events to one tfevents file.
type Writer struct {
	f    *os.File
	w    *bufio.Writer
	Path string
}

// Create makes dir and a new event file in it, named as TensorBoard expects
// (events.out.tfevents.<unix seconds>.<host>), and writes the file_version record.
func Create(dir string) (*Writer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	now := time.Now()
	p := filepath.Join(dir, fmt.Sprintf("events.out.tfevents.%d.%s", now.Unix(), host))
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("tensorboard: %w", err)
	}
	w := &Writer{f: f, w: bufio.NewWriter(f), Path: p}
	if err := w.write(Event{WallTime: seconds(now), FileVersion: "brain.Event:2"}); err != nil {
		f.Close()
		return nil, err
	}
	return w, w.w.Flush()
}

func seconds(t time.Time) float64 { return float64(t.Unix()) + float64(t.Nanosecond())/1e9 }

func (w *Writer) write(e Event) error {
	data := e.marshal()
	var hdr [12]byte
	binary.LittleEndian.PutUint64(hdr[:8], uint64(len(data)))
	binary.LittleEndian.PutUint32(hdr[8:], maskedCRC(hdr[:8]))
	var tail [4]byte
	binary.LittleEndian.PutUint32(tail[:], maskedCRC(data))
	for _, p := range [][]byte{hdr[:], data, tail[:]} {
		if _, err := w.w.Write(p); err != nil {
			return fmt.Errorf("tensorboard: %s: %w", w.Path, err)
		}
	}
	return nil
}

// Scalars writes one event with a scalar per key at step, and flushes it to the file (TensorBoard
// reads the file while it grows). NaN and ±Inf are written as they are (TensorBoard shows them).
func (w *Writer) Scalars(step int, m map[string]float64, at time.Time) error {
	s := make(map[string]float32, len(m))
	for k, v := range m {
		s[k] = float32(v)
	}
	if err := w.write(Event{WallTime: seconds(at), Step: int64(step), Scalars: s}); err != nil {
		return err
	}
	return w.w.Flush()
}

// Close flushes and closes the file.
func (w *Writer) Close() error {
	err := w.w.Flush()
	return errors.Join(err, w.f.Close())
}

// Read decodes an event file, checking every record's two CRCs (for tests and tools).
func Read(r io.Reader) ([]Event, error) {
	br := bufio.NewReader(r)
	var out []Event
	for n := 0; ; n++ {
		var hdr [12]byte
		if _, err := io.ReadFull(br, hdr[:]); err == io.EOF {
			return out, nil
		} else if err != nil {
			return out, fmt.Errorf("record %d: header: %w", n, err)
		}
		if got, want := binary.LittleEndian.Uint32(hdr[8:]), maskedCRC(hdr[:8]); got != want {
			return out, fmt.Errorf("record %d: length crc %08x, want %08x", n, got, want)
		}
		size := binary.LittleEndian.Uint64(hdr[:8])
		if size > 1<<26 {
			return out, fmt.Errorf("record %d: length %d", n, size)
		}
		data := make([]byte, size+4)
		if _, err := io.ReadFull(br, data); err != nil {
			return out, fmt.Errorf("record %d: %w", n, err)
		}
		if got, want := binary.LittleEndian.Uint32(data[size:]), maskedCRC(data[:size]); got != want {
			return out, fmt.Errorf("record %d: data crc %08x, want %08x", n, got, want)
		}
		e, err := unmarshalEvent(data[:size])
		if err != nil {
			return out, fmt.Errorf("record %d: %w", n, err)
		}
		out = append(out, e)
	}
}

// fields walks a protobuf message: f(field, wire, varint or fixed value, bytes).
func fields(b []byte, f func(field, wire int, v uint64, p []byte) error) error {
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return errors.New("bad key")
		}
		b = b[n:]
		field, wire := int(key>>3), int(key&7)
		var v uint64
		var p []byte
		switch wire {
		case 0:
			v, n = binary.Uvarint(b)
			if n <= 0 {
				return errors.New("bad varint")
			}
			b = b[n:]
		case 1:
			if len(b) < 8 {
				return errors.New("short fixed64")
			}
			v, b = binary.LittleEndian.Uint64(b), b[8:]
		case 5:
			if len(b) < 4 {
				return errors.New("short fixed32")
			}
			v, b = uint64(binary.LittleEndian.Uint32(b)), b[4:]
		case 2:
			l, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return errors.New("bad length")
			}
			p, b = b[n:n+int(l)], b[n+int(l):]
		default:
			return fmt.Errorf("wire type %d", wire)
		}
		if err := f(field, wire, v, p); err != nil {
			return err
		}
	}
	return nil
}

func unmarshalEvent(b []byte) (Event, error) {
	var e Event
	err := fields(b, func(field, wire int, v uint64, p []byte) error {
		switch {
		case field == 1 && wire == 1:
			e.WallTime = math.Float64frombits(v)
		case field == 2 && wire == 0:
			e.Step = int64(v)
		case field == 3 && wire == 2:
			e.FileVersion = string(p)
		case field == 5 && wire == 2:
			return fields(p, func(field, wire int, _ uint64, val []byte) error {
				if field != 1 || wire != 2 {
					return nil
				}
				var tag string
				var x float32
				if err := fields(val, func(field, wire int, v uint64, p []byte) error {
					switch {
					case field == 1 && wire == 2:
						tag = string(p)
					case field == 2 && wire == 5:
						x = math.Float32frombits(uint32(v))
					}
					return nil
				}); err != nil {
					return err
				}
				if e.Scalars == nil {
					e.Scalars = map[string]float32{}
				}
				e.Scalars[tag] = x
				return nil
			})
		}
		return nil
	})
	return e, err
}
