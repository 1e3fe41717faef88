package data

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// fuzzSeeds is a small synthetic dataset as Arrow IPC and as Parquet (the project's writer).
func fuzzSeeds(f *testing.F) (ipc, parquet []byte) {
	o := SynthOptions{Count: 3, Heldout: 0, Frames: 2, Size: 16, TextDim: 4, Seed: 2}
	p, err := WriteSynth(f.TempDir(), o, nil)
	if err != nil {
		f.Fatal(err)
	}
	d, err := Open(p.Train)
	if err != nil {
		f.Fatal(err)
	}
	defer d.Close()
	pq := filepath.Join(f.TempDir(), "x.parquet")
	writeProjectParquet(f, d, pq)
	ipc, _ = os.ReadFile(p.Train)
	parquet, _ = os.ReadFile(pq)
	return ipc, parquet
}

// readAll opens a dataset file, reads every tensor of every row and runs the full inspection; any
// bytes give data or an error naming the file, never a panic.
func readAll(t *testing.T, p string) {
	if _, err := Inspect(p, true); err != nil {
		return
	}
	d, err := Open(p)
	if err != nil {
		t.Fatalf("Inspect accepted %s, Open refuses it: %v", p, err)
	}
	defer d.Close()
	for i := 0; i < d.NumRows(); i++ {
		row, err := d.Row(i)
		if err != nil {
			t.Fatalf("Inspect accepted row %d, Row refuses it: %v", i, err)
		}
		for _, x := range row.f.Tensors {
			tr, err := row.Tensor(x)
			if err != nil {
				t.Fatalf("Inspect accepted row %d, Tensor(%s) refuses it: %v", i, x, err)
			}
			tr.Decode(make([]float32, tr.Numel()), nil, nil)
		}
	}
}

func FuzzArrowIPC(f *testing.F) {
	ipc, _ := fuzzSeeds(f)
	f.Add(ipc)
	f.Add(ipc[:len(ipc)/2])
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "x.arrow")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		readAll(t, p)
	})
}

func FuzzParquet(f *testing.F) {
	_, pq := fuzzSeeds(f)
	f.Add(pq)
	f.Add(pq[:len(pq)-16])
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "x.parquet")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		readAll(t, p)
	})
}

// FuzzLoaderCursor: any cursor bytes (as a checkpoint's state.json holds them) are refused or put the
// loader exactly there: the next batch is batch c.Batch of epoch c.Epoch.
func FuzzLoaderCursor(f *testing.F) {
	d, _ := synthDataset(f, 12)
	l, err := NewLoader(d, LoaderConfig{BatchSize: 2, Seed: 5, TextLen: 8, Prefetch: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(l.Close)
	good, _ := json.Marshal(l.Cursor())
	f.Add(good)
	f.Add([]byte(`{"epoch":-1,"batch":0,"seed":5,"rank":0,"world":1,"rows":12,"batch_size":2}`))
	f.Add([]byte(`{"epoch":9223372036854775807,"batch":5,"seed":5,"rank":0,"world":1,"rows":12,"batch_size":2}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Cursor
		if err := json.Unmarshal(b, &c); err != nil {
			return
		}
		if err := l.Restore(c); err != nil {
			return
		}
		bt, err := l.Next()
		if err != nil {
			t.Fatalf("cursor %+v accepted, then Next: %v", c, err)
		}
		if bt.Epoch != c.Epoch || bt.Index != c.Batch {
			t.Fatalf("cursor %+v accepted, next batch is epoch %d batch %d", c, bt.Epoch, bt.Index)
		}
	})
}
