package models

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/fewstep/fewstep/kernels"
)

// safetensors: an 8-byte little-endian header length n, n bytes of JSON header (padded with spaces
// to a multiple of 8 so the data is 8-byte aligned), then the tensors' bytes. The header maps each
// name to {"dtype", "shape", "data_offsets": [begin, end)} relative to the data; "__metadata__"
// holds string pairs.

// NamedTensor is one tensor of a safetensors file, in float32 on the host.
type NamedTensor struct {
	Name  string
	Shape []int
	Data  []float32
}

var stDTypes = map[kernels.DType]string{kernels.F32: "F32", kernels.BF16: "BF16", kernels.F16: "F16"}

// maxHeader bounds the JSON header (the reference implementation uses 100 MB).
const maxHeader = 100 << 20

// WriteSafetensors writes ts in the given dtype (F32, BF16 or F16), in order, atomically: to a
// temporary file in the same folder, fsync, rename (a crash leaves the old file or none).
func WriteSafetensors(path string, ts []NamedTensor, dt kernels.DType, meta map[string]string) error {
	code, ok := stDTypes[dt]
	if !ok {
		return fmt.Errorf("models: write %s: unsupported dtype %v", path, dt)
	}
	hdr := make(map[string]any, len(ts)+1)
	if len(meta) > 0 {
		hdr["__metadata__"] = meta
	}
	off := 0
	for _, t := range ts {
		if t.Name == "" || t.Name == "__metadata__" {
			return fmt.Errorf("models: write %s: bad tensor name %q", path, t.Name)
		}
		if _, dup := hdr[t.Name]; dup {
			return fmt.Errorf("models: write %s: duplicate tensor %q", path, t.Name)
		}
		if numel(t.Shape) != len(t.Data) {
			return fmt.Errorf("models: write %s: tensor %s has shape %v but %d values", path, t.Name, t.Shape, len(t.Data))
		}
		n := len(t.Data) * dt.Size()
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		hdr[t.Name] = map[string]any{"dtype": code, "shape": shape, "data_offsets": []int{off, off + n}}
		off += n
	}
	hj, err := json.Marshal(hdr)
	if err != nil {
		return fmt.Errorf("models: write %s: %w", path, err)
	}
	for len(hj)%8 != 0 {
		hj = append(hj, ' ')
	}
	return writeAtomic(path, func(f *os.File) error {
		var n8 [8]byte
		binary.LittleEndian.PutUint64(n8[:], uint64(len(hj)))
		w := newBufWriter(f)
		w.write(n8[:])
		w.write(hj)
		for _, t := range ts {
			w.values(t.Data, dt)
		}
		return w.flush()
	})
}

// writeAtomic writes path through fill on a temporary file of the same folder, fsyncs it, renames it
// over path and fsyncs the folder.
func writeAtomic(path string, fill func(f *os.File) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("models: write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := fill(f); err != nil {
		return fmt.Errorf("models: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("models: write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("models: write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return fmt.Errorf("models: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("models: write %s: rename: %w", path, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// bufWriter encodes float32 values in a storage dtype through a fixed buffer.
type bufWriter struct {
	w   io.Writer
	buf []byte
	err error
}

func newBufWriter(w io.Writer) *bufWriter { return &bufWriter{w: w, buf: make([]byte, 0, 1<<20)} }

func (b *bufWriter) write(p []byte) {
	if b.err != nil {
		return
	}
	if len(b.buf)+len(p) > cap(b.buf) {
		b.flushBuf()
	}
	if len(p) > cap(b.buf) {
		_, b.err = b.w.Write(p)
		return
	}
	b.buf = append(b.buf, p...)
}

func (b *bufWriter) values(v []float32, dt kernels.DType) {
	for len(v) > 0 && b.err == nil {
		room := (cap(b.buf) - len(b.buf)) / dt.Size()
		if room == 0 {
			b.flushBuf()
			continue
		}
		n := min(room, len(v))
		b.buf = encode(b.buf, v[:n], dt)
		v = v[n:]
	}
}

func (b *bufWriter) flushBuf() {
	if b.err == nil && len(b.buf) > 0 {
		_, b.err = b.w.Write(b.buf)
	}
	b.buf = b.buf[:0]
}

func (b *bufWriter) flush() error { b.flushBuf(); return b.err }

func encode(dst []byte, v []float32, dt kernels.DType) []byte {
	switch dt {
	case kernels.F32:
		for _, x := range v {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(x))
		}
	case kernels.BF16:
		for _, x := range v {
			dst = binary.LittleEndian.AppendUint16(dst, F32ToBF16(x))
		}
	case kernels.F16:
		for _, x := range v {
			dst = binary.LittleEndian.AppendUint16(dst, F32ToF16(x))
		}
	}
	return dst
}

// stEntry is one tensor of a parsed header.
type stEntry struct {
	Name       string
	DType      kernels.DType
	Shape      []int
	Begin, End int64 // absolute file offsets
}

// stFile is an open safetensors file with its parsed, validated header.
type stFile struct {
	path    string
	f       io.ReaderAt
	close   func() error
	entries []stEntry // in data order
	byName  map[string]int
	meta    map[string]string
}

func openSafetensors(path string) (*stFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("models: read %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("models: read %s: %w", path, err)
	}
	st, err := parseHeader(path, f, fi.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	st.close = f.Close
	return st, nil
}

// parseHeader reads and validates the header of a safetensors file of size bytes read through f.
func parseHeader(path string, f io.ReaderAt, size int64) (*stFile, error) {
	var n8 [8]byte
	if size < 8 {
		return nil, fmt.Errorf("models: read %s: not a safetensors file: %d bytes, no 8-byte header length", path, size)
	}
	if _, err := f.ReadAt(n8[:], 0); err != nil {
		return nil, fmt.Errorf("models: read %s: %w", path, err)
	}
	hn := binary.LittleEndian.Uint64(n8[:])
	if hn > maxHeader || int64(hn) > size-8 {
		return nil, fmt.Errorf("models: read %s: header length %d does not fit the file (%d bytes): truncated or not safetensors", path, hn, size)
	}
	hb := make([]byte, hn)
	if _, err := f.ReadAt(hb, 8); err != nil {
		return nil, fmt.Errorf("models: read %s: header: %w", path, err)
	}
	raw, err := uniqueObject(hb)
	if err != nil {
		return nil, fmt.Errorf("models: read %s: header: %w", path, err)
	}
	st := &stFile{path: path, f: f, byName: map[string]int{}}
	dataStart := int64(8 + hn)
	dataLen := size - dataStart
	for name, v := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(v, &st.meta); err != nil {
				return nil, fmt.Errorf("models: read %s: __metadata__ must map strings to strings: %w", path, err)
			}
			continue
		}
		var e struct {
			DType   string  `json:"dtype"`
			Shape   []int   `json:"shape"`
			Offsets []int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, fmt.Errorf("models: read %s: tensor %s: bad header entry: %w", path, name, err)
		}
		var dt kernels.DType
		switch e.DType {
		case "F32":
			dt = kernels.F32
		case "BF16":
			dt = kernels.BF16
		case "F16":
			dt = kernels.F16
		default:
			return nil, fmt.Errorf("models: read %s: tensor %s: unsupported dtype %q (F32, BF16, F16)", path, name, e.DType)
		}
		for _, s := range e.Shape {
			if s < 0 {
				return nil, fmt.Errorf("models: read %s: tensor %s: negative size in shape %v", path, name, e.Shape)
			}
		}
		if len(e.Offsets) != 2 || e.Offsets[0] < 0 || e.Offsets[1] < e.Offsets[0] || e.Offsets[1] > dataLen {
			return nil, fmt.Errorf("models: read %s: tensor %s: data_offsets %v outside the %d data bytes (truncated file?)", path, name, e.Offsets, dataLen)
		}
		// The shape's byte size, checked for overflow before anything is allocated: it must equal
		// the data_offsets span, which the file size bounds.
		want, ok := ShapeBytes(e.Shape, dt.Size())
		if !ok {
			return nil, fmt.Errorf("models: read %s: tensor %s: shape %v of %s overflows (more than 2^62 bytes)", path, name, e.Shape, e.DType)
		}
		if e.Offsets[1]-e.Offsets[0] != want {
			return nil, fmt.Errorf("models: read %s: tensor %s: %s %v needs %d bytes, data_offsets %v give %d",
				path, name, e.DType, e.Shape, want, e.Offsets, e.Offsets[1]-e.Offsets[0])
		}
		st.entries = append(st.entries, stEntry{Name: name, DType: dt, Shape: e.Shape,
			Begin: dataStart + e.Offsets[0], End: dataStart + e.Offsets[1]})
	}
	sort.Slice(st.entries, func(i, j int) bool {
		a, b := st.entries[i], st.entries[j]
		return a.Begin < b.Begin || (a.Begin == b.Begin && a.End < b.End)
	})
	prev := -1 // the last tensor with bytes: an empty tensor overlaps nothing
	for i, e := range st.entries {
		if e.End > e.Begin {
			if prev >= 0 && e.Begin < st.entries[prev].End {
				return nil, fmt.Errorf("models: read %s: tensors %s and %s overlap", path, st.entries[prev].Name, e.Name)
			}
			prev = i
		}
		st.byName[e.Name] = i
	}
	return st, nil
}

// ShapeBytes is the byte size of a tensor of shape with elements of es bytes, and false when it
// exceeds 2^62 (an overflow, or a size no machine holds). A zero dimension makes it 0.
func ShapeBytes(shape []int, es int) (int64, bool) {
	const limit = 1 << 62
	for _, s := range shape {
		if s == 0 {
			return 0, true
		}
	}
	n := int64(es)
	for _, s := range shape {
		if s < 0 || int64(s) > limit/n {
			return 0, false
		}
		n *= int64(s)
	}
	return n, true
}

// uniqueObject parses a JSON object into its members and refuses a repeated key (encoding/json
// would keep the last one silently: two tensors of one name are a corrupt file, not a choice).
func uniqueObject(b []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("not a JSON object (starts with %v)", tok)
	}
	out := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not a JSON object: %w", err)
		}
		key := tok.(string) // inside an object the decoder yields keys as strings
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("not a JSON object: key %q: %w", key, err)
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("key %q appears twice", key)
		}
		out[key] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("not a JSON object: data after its end")
	}
	return out, nil
}

// read decodes entry e into dst (len = numel).
func (st *stFile) read(e stEntry, dst []float32) error {
	const chunk = 1 << 20
	buf := make([]byte, min(chunk, e.End-e.Begin))
	pos, k := e.Begin, 0
	es := e.DType.Size()
	for pos < e.End {
		n := min(int64(len(buf)), e.End-pos)
		b := buf[:n]
		if _, err := st.f.ReadAt(b, pos); err != nil {
			return fmt.Errorf("models: read %s: tensor %s: %w", st.path, e.Name, err)
		}
		k += decode(dst[k:], b, e.DType, es)
		pos += n
	}
	return nil
}

func decode(dst []float32, b []byte, dt kernels.DType, es int) int {
	n := len(b) / es
	switch dt {
	case kernels.F32:
		for i := 0; i < n; i++ {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case kernels.BF16:
		for i := 0; i < n; i++ {
			dst[i] = BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case kernels.F16:
		for i := 0; i < n; i++ {
			dst[i] = F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	}
	return n
}

// ReadSafetensors reads every tensor of a safetensors file as float32 (from F32, BF16 or F16), and
// its metadata. A truncated or corrupt file, an unknown dtype, or a byte length that disagrees with
// a shape is an error naming the file and the tensor.
func ReadSafetensors(path string) (map[string]NamedTensor, map[string]string, error) {
	st, err := openSafetensors(path)
	if err != nil {
		return nil, nil, err
	}
	defer st.close()
	return st.readAll()
}

// readAll decodes every tensor of an opened file.
func (st *stFile) readAll() (map[string]NamedTensor, map[string]string, error) {
	out := make(map[string]NamedTensor, len(st.entries))
	for _, e := range st.entries {
		d := make([]float32, numel(e.Shape))
		if err := st.read(e, d); err != nil {
			return nil, nil, err
		}
		out[e.Name] = NamedTensor{Name: e.Name, Shape: e.Shape, Data: d}
	}
	return out, st.meta, nil
}

// NonFinite is the index of the first NaN or ±Inf of x, or -1.
func NonFinite(x []float32) int {
	for i, v := range x {
		if v-v != 0 { // NaN or ±Inf: Inf−Inf and NaN−NaN are NaN
			return i
		}
	}
	return -1
}

// F32ToBF16 rounds to the nearest bfloat16, ties to even; NaN stays a (quiet) NaN.
func F32ToBF16(x float32) uint16 {
	u := math.Float32bits(x)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// BF16ToF32 is exact.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToF16 rounds to the nearest IEEE half, ties to even, with subnormals; overflow → ±Inf.
func F32ToF16(x float32) uint16 {
	u := math.Float32bits(x)
	sign := uint16(u>>16) & 0x8000
	a := u & 0x7fffffff
	switch {
	case a > 0x7f800000: // NaN
		return sign | 0x7e00 | uint16(a>>13)&0x3ff
	case a >= 0x477ff000: // ≥ 65520 rounds to Inf (65504 is the largest half)
		return sign | 0x7c00
	case a >= 0x38800000: // normal half: exponent ≥ −14
		// rebias the exponent (127 → 15) and round the 13 dropped mantissa bits to nearest even
		a -= (127 - 15) << 23
		a += 0xfff + (a>>13)&1
		return sign | uint16(a>>13)
	case a < 0x33000000: // < 2^-25: rounds to ±0
		return sign
	default: // subnormal half: value = m·2^-24
		e := a >> 23               // biased f32 exponent, 102..112
		m := a&0x7fffff | 0x800000 // 24-bit significand: value = m·2^(e−150)
		shift := 126 - e           // m·2^(e−150) / 2^-24 = m >> (126 − e)
		r := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
}

// F16ToF32 is exact.
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	e := uint32(h>>10) & 0x1f
	m := uint32(h) & 0x3ff
	switch {
	case e == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | m<<13)
	case e != 0:
		return math.Float32frombits(sign | (e+127-15)<<23 | m<<13)
	case m == 0:
		return math.Float32frombits(sign)
	default: // subnormal: m·2^-24
		f := float32(m) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
}

// describeKeys formats a key list for an error, at most 20 names.
func describeKeys(ks []string) string {
	sort.Strings(ks)
	if len(ks) > 20 {
		return strings.Join(ks[:20], ", ") + fmt.Sprintf(", … (%d in all)", len(ks))
	}
	return strings.Join(ks, ", ")
}
