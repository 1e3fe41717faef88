package data

import (
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
	p := filepath.Join(t.TempDir(), "corrupt.parquet")
	corruptTrials(t, b, p, 150, func() {
		if _, err := Inspect(p, true); err != nil {
			wantErr(t, err, p)
		}
	})
}
