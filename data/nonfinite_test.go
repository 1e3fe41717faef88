package data

import (
	"encoding/binary"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// putValue writes v as element i of a tensor's bytes in its dtype.
func putValue(t Tensor, i int, v float32) {
	switch t.DType {
	case kernels.F32:
		binary.LittleEndian.PutUint32(t.Bytes[4*i:], math.Float32bits(v))
	case kernels.BF16:
		binary.LittleEndian.PutUint16(t.Bytes[2*i:], BF16(v))
	case kernels.F16:
		binary.LittleEndian.PutUint16(t.Bytes[2*i:], F16(v))
	}
}

// A NaN or Inf in one latent or one text embedding is an error naming the file, the row, the column
// and the element: from the full scan (CheckFinite: `train --dry-run`) and from the loader when it
// serves the row (training never sees it).
func TestNonFiniteDataNamed(t *testing.T) {
	for _, c := range []struct {
		tensor int // 0 latent, 1 text embedding
		row    int
		elem   int
		v      float32
		col    string
	}{
		{0, 7, 13, float32(math.NaN()), "vae_latent_bytes"},
		{1, 2, 3, float32(math.Inf(-1)), "text_embedding_bytes"},
	} {
		p := rewrite(t, []string{Latent, TextEmb}, func(i int, ts []Tensor) []Tensor {
			if i == c.row {
				putValue(ts[c.tensor], c.elem, c.v)
			}
			return ts
		})
		d, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		err = CheckFinite(d)
		for _, want := range []string{p, "row " + strconv.Itoa(c.row), c.col, "element " + strconv.Itoa(c.elem), "not finite"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("CheckFinite: %v, want it to mention %q", err, want)
			}
		}
		l, err := NewLoader(d, LoaderConfig{BatchSize: 12, TextLen: 8, NoShuffle: true})
		if err != nil {
			t.Fatal(err)
		}
		_, err = l.Next()
		if err == nil || !strings.Contains(err.Error(), "row "+strconv.Itoa(c.row)) || !strings.Contains(err.Error(), c.col) || !strings.Contains(err.Error(), "not finite") {
			t.Fatalf("loader: %v", err)
		}
		l.Close()
		d.Close()
	}
}
