package data

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// Corrupt Parquet files (random bytes over the footer or anywhere) give errors naming the file.
func TestBadCorruptParquetNeverPanics(t *testing.T) {
	d, _ := Open(synthFile(t))
	src := filepath.Join(t.TempDir(), "x.parquet")
	writeProjectParquet(t, d, src)
	d.Close()
	b, _ := os.ReadFile(src)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 4))
	p := filepath.Join(t.TempDir(), "corrupt.parquet")
	for trial := 0; trial < 150; trial++ {
		c := append([]byte(nil), b...)
		for k := 0; k < 1+rng.IntN(8); k++ {
			var i int
			if rng.IntN(2) == 0 {
				i = len(c) - 1 - rng.IntN(min(len(c), 2048))
			} else {
				i = rng.IntN(len(c))
			}
			c[i] = byte(rng.Uint32())
		}
		os.WriteFile(p, c, 0o644)
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("trial %d: panic: %v", trial, r)
				}
			}()
			if _, err := Inspect(p, true); err != nil {
				wantErr(t, err, p)
			}
		}()
	}
}
