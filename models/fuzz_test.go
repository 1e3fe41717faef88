package models

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// encodeSafetensors is WriteSafetensors into memory (the fuzz targets' seeds).
func encodeSafetensors(t testing.TB, ts []NamedTensor, dt kernels.DType) []byte {
	p := filepath.Join(t.TempDir(), "seed.safetensors")
	if err := WriteSafetensors(p, ts, dt, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzSafetensors: any bytes give tensors or an error, never a panic or an allocation beyond what the
// file's size accounts for; what parses has one value per element of its shape, and writing it back
// in F32 and reading that again gives the same bits.
func FuzzSafetensors(f *testing.F) {
	rng := rand.New(rand.NewSource(1))
	ts := []NamedTensor{
		{Name: "a.weight", Shape: []int{3, 5}, Data: randn(rng, 15, 1)},
		{Name: "scalar", Shape: []int{}, Data: []float32{2.5}},
		{Name: "empty", Shape: []int{0, 4}, Data: []float32{}},
	}
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16, kernels.F16} {
		f.Add(encodeSafetensors(f, ts, dt))
	}
	f.Add([]byte{})
	f.Add(binary.LittleEndian.AppendUint64(nil, 1<<62))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseHeader("fuzz", bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		var total int64
		for _, e := range st.entries {
			total += e.End - e.Begin
		}
		if total > int64(len(b)) {
			t.Fatalf("entries claim %d bytes of a %d-byte file", total, len(b))
		}
		got, _, err := st.readAll()
		if err != nil {
			return
		}
		var back []NamedTensor
		for name, nt := range got {
			if len(nt.Data) != numel(nt.Shape) {
				t.Fatalf("%s: shape %v but %d values", name, nt.Shape, len(nt.Data))
			}
			if name != "" && name != "__metadata__" {
				back = append(back, nt)
			}
		}
		p := filepath.Join(t.TempDir(), "back.safetensors")
		if err := WriteSafetensors(p, back, kernels.F32, nil); err != nil {
			t.Fatalf("writing back what was read: %v", err)
		}
		again, _, err := ReadSafetensors(p)
		if err != nil {
			t.Fatalf("reading back: %v", err)
		}
		for _, nt := range back {
			a := again[nt.Name]
			if !slices.Equal(a.Shape, nt.Shape) || len(a.Data) != len(nt.Data) {
				t.Fatalf("%s: shape %v after a round trip, was %v", nt.Name, a.Shape, nt.Shape)
			}
			for i := range nt.Data {
				if math.Float32bits(a.Data[i]) != math.Float32bits(nt.Data[i]) {
					t.Fatalf("%s[%d]: %x after a round trip, was %x", nt.Name, i, math.Float32bits(a.Data[i]), math.Float32bits(nt.Data[i]))
				}
			}
		}
	})
}

// FuzzWanConfig: any config.json gives a valid Config or an error, never a panic; what is accepted
// is within the limits (Validate) and its parameter count is computable.
func FuzzWanConfig(f *testing.F) {
	for _, name := range []string{"tiny.config.json", "odd.config.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"dim": 1e300}`))
	f.Add([]byte(`{"dim":9223372036854775807,"ffn_dim":8,"freq_dim":8,"in_dim":4,"out_dim":4,"num_heads":1,"num_layers":1,"text_len":4,"eps":1e-6}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "config.json")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := ReadWanConfig(p)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ReadWanConfig accepted a config Validate refuses: %v", err)
		}
		if n := c.NumParams(); n <= 0 {
			t.Fatalf("accepted config %+v has %d parameters", c, n)
		}
	})
}
