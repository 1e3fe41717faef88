package models

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// Every 16-bit pattern decodes and re-encodes to itself (NaNs stay NaN).
func TestHalfRoundTripAllPatterns(t *testing.T) {
	for u := 0; u < 1<<16; u++ {
		h := uint16(u)
		if f := F16ToF32(h); math.IsNaN(float64(f)) {
			if !math.IsNaN(float64(F16ToF32(F32ToF16(f)))) {
				t.Fatalf("f16 NaN %#04x lost", h)
			}
		} else if g := F32ToF16(f); g != h {
			t.Fatalf("f16 %#04x → %g → %#04x", h, f, g)
		}
		if f := BF16ToF32(h); math.IsNaN(float64(f)) {
			if !math.IsNaN(float64(BF16ToF32(F32ToBF16(f)))) {
				t.Fatalf("bf16 NaN %#04x lost", h)
			}
		} else if g := F32ToBF16(f); g != h {
			t.Fatalf("bf16 %#04x → %g → %#04x", h, f, g)
		}
	}
}

// Rounding of float32 values against a brute-force reference: the nearest representable 16-bit
// value, ties to the even pattern, and past the largest finite value to Inf (IEEE: max + ulp is the
// virtual next value, whose pattern is Inf's).
func TestHalfRounding(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, e := range []struct {
		name   string
		decode func(uint16) float32
		encode func(float32) uint16
		maxPat uint16 // largest finite positive pattern; maxPat+1 is +Inf
	}{{"f16", F16ToF32, F32ToF16, 0x7bff}, {"bf16", BF16ToF32, F32ToBF16, 0x7f7f}} {
		var vals []float64 // value of every pattern 0..maxPat+1, ascending (the last one virtual)
		for u := 0; u <= int(e.maxPat); u++ {
			vals = append(vals, float64(e.decode(uint16(u))))
		}
		n := len(vals)
		vals = append(vals, 2*vals[n-1]-vals[n-2])
		ref := func(x float32) uint16 {
			a := math.Abs(float64(x))
			sign := uint16(0)
			if math.Signbit(float64(x)) {
				sign = 0x8000
			}
			i := sort.SearchFloat64s(vals, a) // vals[i-1] < a ≤ vals[i]
			if i == len(vals) {
				return sign | (e.maxPat + 1)
			}
			if vals[i] == a {
				return sign | uint16(i)
			}
			lo, hi := i-1, i
			if dl, dh := a-vals[lo], vals[hi]-a; dl < dh || (dl == dh && lo%2 == 0) {
				return sign | uint16(lo)
			}
			return sign | uint16(hi)
		}
		var xs []float32
		for i := 0; i+1 < len(vals); i += 7 { // exact midpoints (ties) and points near them
			mid := float32((vals[i] + vals[i+1]) / 2)
			xs = append(xs, mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, float32(math.Inf(1))), -mid)
		}
		for i := 0; i < 200000; i++ { // random bit patterns over the whole float32 range
			x := math.Float32frombits(rng.Uint32())
			if !math.IsNaN(float64(x)) {
				xs = append(xs, x)
			}
		}
		xs = append(xs, 65504, 65519.996, 65520, 1e-8, 5.96e-8, 2.98e-8, 2.9802322e-08, float32(math.Inf(1)), float32(math.Inf(-1)), 0, float32(math.Copysign(0, -1)))
		bad := 0
		for _, x := range xs {
			if got, want := e.encode(x), ref(x); got != want {
				if bad++; bad < 5 {
					t.Errorf("%s(%g [%#08x]) = %#04x, want %#04x", e.name, x, math.Float32bits(x), got, want)
				}
			}
		}
		t.Logf("%s: %d values checked, %d wrong", e.name, len(xs), bad)
	}
}

func TestSafetensorsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(3))
	ts := []NamedTensor{
		{Name: "a.weight", Shape: []int{3, 5}, Data: randn(rng, 15, 1)},
		{Name: "scalar", Shape: []int{}, Data: []float32{2.5}},
		{Name: "b", Shape: []int{7}, Data: randn(rng, 7, 100)},
		{Name: "empty", Shape: []int{0, 4}, Data: []float32{}},
	}
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16, kernels.F16} {
		path := filepath.Join(dir, dt.String()+".safetensors")
		if err := WriteSafetensors(path, ts, dt, map[string]string{"k": "v"}); err != nil {
			t.Fatal(err)
		}
		raw, _ := os.ReadFile(path)
		hn := binary.LittleEndian.Uint64(raw)
		if hn%8 != 0 {
			t.Errorf("%v: header length %d not 8-byte aligned", dt, hn)
		}
		var hdr map[string]json.RawMessage
		if err := json.Unmarshal(raw[8:8+hn], &hdr); err != nil {
			t.Fatalf("%v: header: %v", dt, err)
		}
		if want := int(8+hn) + (15+1+7)*dt.Size(); len(raw) != want {
			t.Errorf("%v: file has %d bytes, want %d", dt, len(raw), want)
		}
		got, meta, err := ReadSafetensors(path)
		if err != nil {
			t.Fatal(err)
		}
		if meta["k"] != "v" || len(got) != len(ts) {
			t.Fatalf("%v: meta %v, %d tensors", dt, meta, len(got))
		}
		for _, w := range ts {
			g := got[w.Name]
			if !slices.Equal(g.Shape, w.Shape) {
				t.Errorf("%v: %s shape %v, want %v", dt, w.Name, g.Shape, w.Shape)
			}
			for i, v := range w.Data {
				want := storedAs(dt, v)
				if g.Data[i] != want {
					t.Errorf("%v: %s[%d] = %g, want %g", dt, w.Name, i, g.Data[i], want)
				}
			}
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1+indexOf(dt) {
			t.Errorf("temporary files left behind: %v", ents)
		}
	}
}

func indexOf(dt kernels.DType) int { return int(dt) }

// Corrupt files give errors naming the file and the tensor, never a panic.
func TestSafetensorsCorrupt(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	if err := WriteSafetensors(good, []NamedTensor{{Name: "w", Shape: []int{4, 4}, Data: make([]float32, 16)}}, kernels.F32, nil); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(good)
	hn := binary.LittleEndian.Uint64(raw)
	withHeader := func(h string) []byte {
		for len(h)%8 != 0 {
			h += " "
		}
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
		return append(append(b, h...), make([]byte, 64)...)
	}
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "no 8-byte header length"},
		{"truncated data", raw[:len(raw)-3], "tensor w"},
		{"header past end", raw[:8+hn-2], "header length"},
		{"bad json", withHeader(`{"w": [}`), "not a JSON object"},
		{"unknown dtype", withHeader(`{"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}`), `unsupported dtype "I64"`},
		{"size mismatch", withHeader(`{"w":{"dtype":"F32","shape":[3,3],"data_offsets":[0,32]}}`), "needs 36 bytes"},
		{"overlap", withHeader(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}`), "overlap"},
		{"negative shape", withHeader(`{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}`), "negative"},
		{"repeated key", withHeader(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`), `key "w" appears twice`},
		{"shape product overflows", withHeader(`{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}`), "overflows"},
		{"shape product wraps to the span", withHeader(`{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}`), "overflows"},
		{"trailing garbage", withHeader(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} x`), "data after its end"},
	}
	for _, c := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_"))
		os.WriteFile(p, c.data, 0o644)
		_, _, err := ReadSafetensors(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v, want one naming %s and saying %q", c.name, err, p, c.want)
		}
	}
	if err := WriteSafetensors(filepath.Join(dir, "x"), []NamedTensor{{Name: "w", Shape: []int{2}, Data: []float32{1}}}, kernels.F32, nil); err == nil || !strings.Contains(err.Error(), "shape [2] but 1 values") {
		t.Errorf("shape/data mismatch: %v", err)
	}
}

// A failed write leaves the previous file intact and no temporary file behind.
func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ck.safetensors")
	os.WriteFile(p, []byte("previous"), 0o644)
	boom := errors.New("disk full")
	err := writeAtomic(p, func(f *os.File) error { f.Write([]byte("partial")); return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("error %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "previous" {
		t.Errorf("file now %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
}

func TestSaveLoadStrict(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := Preset("tiny")
	dev := kernels.CPU()
	m := New(dev, cfg, false)
	m.Init(1)
	path := filepath.Join(dir, "m.safetensors")
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		if err := m.Save(path, dt); err != nil {
			t.Fatal(err)
		}
		m2 := New(dev, cfg, false)
		if err := m2.Load(path); err != nil {
			t.Fatal(err)
		}
		a, b := host(dev, m.W), host(dev, m2.W)
		for i := range a {
			want := a[i]
			if dt == kernels.BF16 {
				want = BF16ToF32(F32ToBF16(a[i]))
			}
			if b[i] != want {
				t.Fatalf("%v: W[%d] = %g, want %g", dt, i, b[i], want)
			}
		}
	}
	// a checkpoint with one key missing, one unexpected, one mis-shaped
	ts := m.Tensors(m.W, "")
	var bad []NamedTensor
	for _, x := range ts {
		switch x.Name {
		case "blocks.1.ffn.0.bias":
			continue
		case "head.modulation":
			x.Shape = []int{2, 64}
		}
		bad = append(bad, x)
	}
	bad = append(bad, NamedTensor{Name: "img_emb.proj.0.weight", Shape: []int{1}, Data: []float32{0}})
	if err := WriteSafetensors(path, bad, kernels.F32, nil); err != nil {
		t.Fatal(err)
	}
	before := host(dev, m.W)
	err := m.Load(path)
	for _, want := range []string{"1 missing keys: blocks.1.ffn.0.bias", "1 unexpected keys: img_emb.proj.0.weight", "head.modulation [2 64] (want [1 2 64])", path} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load error %v, want it to contain %q", err, want)
		}
	}
	if relErr(host(dev, m.W), before) != 0 {
		t.Error("a failed Load changed the weights")
	}
}

// A sharded checkpoint (Wan2.1-14B's layout: shards + *.safetensors.index.json) loads from its
// index or its folder; a key in two shards is an error.
func TestLoadSharded(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := Preset("tiny")
	dev := kernels.CPU()
	m := New(dev, cfg, false)
	m.Init(5)
	ts := m.Tensors(m.W, "")
	half := len(ts) / 2
	wm := map[string]string{}
	for i, part := range [][]NamedTensor{ts[:half], ts[half:]} {
		name := []string{"diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"}[i]
		if err := WriteSafetensors(filepath.Join(dir, name), part, kernels.BF16, nil); err != nil {
			t.Fatal(err)
		}
		for _, x := range part {
			wm[x.Name] = name
		}
	}
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": wm})
	idx := filepath.Join(dir, "diffusion_pytorch_model.safetensors.index.json")
	os.WriteFile(idx, b, 0o644)
	want := host(dev, m.W)
	for i := range want {
		want[i] = BF16ToF32(F32ToBF16(want[i]))
	}
	for _, p := range []string{idx, dir} {
		m2 := New(dev, cfg, false)
		if err := m2.Load(p); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if e := relErr(host(dev, m2.W), want); e != 0 {
			t.Errorf("%s: weights differ (rel %g)", p, e)
		}
	}
	// a folder of shards without an index, with one key duplicated
	dir2 := t.TempDir()
	WriteSafetensors(filepath.Join(dir2, "a.safetensors"), ts[:half+1], kernels.F32, nil)
	WriteSafetensors(filepath.Join(dir2, "b.safetensors"), ts[half:], kernels.F32, nil)
	if err := New(dev, cfg, false).Load(dir2); err == nil || !strings.Contains(err.Error(), "is in both") {
		t.Errorf("duplicate key: %v", err)
	}
	if err := New(dev, cfg, false).Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no *.safetensors") {
		t.Errorf("empty folder: %v", err)
	}
}

// Weights rounded to BF16 and F16 by PyTorch (scripts/dump_goldens.py) load as exactly our own
// rounding of the F32 weights: the decoders and the round-to-nearest-even encoders agree with torch.
func TestTorchHalfWeights(t *testing.T) {
	cfg, err := ReadWanConfig(filepath.Join("testdata", "odd.config.json"))
	if err != nil {
		t.Fatal(err)
	}
	dev := kernels.CPU()
	ref := New(dev, cfg, false)
	if err := ref.Load(filepath.Join("testdata", "odd.weights.safetensors")); err != nil {
		t.Fatal(err)
	}
	w32 := host(dev, ref.W)
	for _, c := range []struct {
		file  string
		round func(float32) float32
	}{
		{"odd.weights.bf16.safetensors", func(x float32) float32 { return BF16ToF32(F32ToBF16(x)) }},
		{"odd.weights.f16.safetensors", func(x float32) float32 { return F16ToF32(F32ToF16(x)) }},
	} {
		m := New(dev, cfg, false)
		if err := m.Load(filepath.Join("testdata", c.file)); err != nil {
			t.Fatal(err)
		}
		got, bad := host(dev, m.W), 0
		for i, x := range w32 {
			if want := c.round(x); got[i] != want {
				if bad++; bad < 4 {
					t.Errorf("%s: W[%d] = %g, our rounding of %g gives %g", c.file, i, got[i], x, want)
				}
			}
		}
		t.Logf("%s: %d values, %d differ from our rounding", c.file, len(w32), bad)
	}
}

// A zero-size tensor shares its offset with its neighbour (WriteSafetensors writes [k, k]) and
// overlaps nothing: found by FuzzSafetensors, whose round trip read such a file back as "overlap"
// when the map order put the empty tensor second.
func TestSafetensorsEmptyTensorAtSharedOffset(t *testing.T) {
	for _, h := range []string{
		`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}`,
		`{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`,
		`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}`,
	} {
		for len(h)%8 != 0 {
			h += " "
		}
		b := append(binary.LittleEndian.AppendUint64(nil, uint64(len(h))), h...)
		b = append(b, 0, 0, 0x80, 0x3f, 0, 0, 0, 0x40) // 1, 2
		p := filepath.Join(t.TempDir(), "e.safetensors")
		os.WriteFile(p, b, 0o644)
		got, _, err := ReadSafetensors(p)
		if err != nil {
			t.Fatalf("%s: %v", h, err)
		}
		if a := got["a"].Data; len(a) != 2 || a[0] != 1 || a[1] != 2 || len(got["e"].Data) != 0 {
			t.Fatalf("%s: read %v", h, got)
		}
	}
}

// Tensors larger than the reader's 1 MiB chunk, in every dtype, with a length that is not a
// multiple of the chunk, read back element for element (each chunk lands at its own offset).
func TestSafetensorsLargerThanChunk(t *testing.T) {
	rng := rand.New(rand.NewSource(8))
	dir := t.TempDir()
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16, kernels.F16} {
		n := (1<<20)/dt.Size()*3 + 12345 // 3 chunks and a part
		ts := []NamedTensor{
			{Name: "small", Shape: []int{3}, Data: randn(rng, 3, 1)},
			{Name: "big", Shape: []int{n}, Data: randn(rng, n, 1)},
		}
		p := filepath.Join(dir, dt.String()+".safetensors")
		if err := WriteSafetensors(p, ts, dt, nil); err != nil {
			t.Fatal(err)
		}
		got, _, err := ReadSafetensors(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range ts {
			g := got[w.Name].Data
			for i, v := range w.Data {
				want := storedAs(dt, v)
				if g[i] != want {
					t.Fatalf("%v: %s[%d] of %d = %g, wrote %g", dt, w.Name, i, len(w.Data), g[i], want)
				}
			}
		}
	}
}

// storedAs is v after a round trip through a file that stores dt (fp32 exact, bf16 and fp16 rounded
// to nearest even).
func storedAs(dt kernels.DType, v float32) float32 {
	switch dt {
	case kernels.BF16:
		return BF16ToF32(F32ToBF16(v))
	case kernels.F16:
		return F16ToF32(F32ToF16(v))
	}
	return v
}
