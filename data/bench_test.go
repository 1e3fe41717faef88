package data

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// The benchmark dataset: the default synthetic set's geometry (8 frames, 32×32 → latents
// [48, 8, 8, 8] float32, 96 KiB each), 512 videos, once as Arrow IPC and once as Parquet.
var benchData struct {
	once     sync.Once
	ipc, pq  string
	err      error
	opts     SynthOptions
	nVideos  int
	batchSiz int
}

func benchFiles(b *testing.B) (string, string) {
	benchData.once.Do(func() {
		dir, err := os.MkdirTemp("", "fewstep-bench")
		if err != nil {
			benchData.err = err
			return
		}
		benchData.opts = SynthOptions{Count: 512, Heldout: 0, Frames: 8, Size: 32, TextDim: 32, Seed: 1}
		p, err := WriteSynth(dir, benchData.opts, nil)
		if err != nil {
			benchData.err = err
			return
		}
		d, err := Open(p.Train)
		if err != nil {
			benchData.err = err
			return
		}
		defer d.Close()
		benchData.ipc = p.Train
		benchData.pq = filepath.Join(dir, "train.parquet")
		writeProjectParquet(b, d, benchData.pq)
	})
	if benchData.err != nil {
		b.Fatal(benchData.err)
	}
	return benchData.ipc, benchData.pq
}

// benchLoader measures batches/s of the loader (batch 8, prefetch 2) and the bytes it copies:
//   - open-copied-B: bytes the reader copied out of the file into Go memory when opening it
//     (IPC: metadata only; Parquet: the whole decoded table);
//   - copied-B/batch: bytes the reader copied while batches were made (0 on both: the reader
//     works on what open made);
//   - amortized-copied-B/batch: open-copied-B over one epoch's batches plus copied-B/batch;
//   - decoded-B/batch: the one copy a sample makes, into the batch buffer the model reads (fp32);
//   - cpu-µs/batch: process CPU time per batch (prefetcher included), steadier than wall time
//     on shared cores.
func benchLoader(b *testing.B, path string) {
	d, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	open := d.CopiedBytes()
	l, err := NewLoader(d, LoaderConfig{BatchSize: 8, Seed: 1, CFGDropout: 0.1, Prefetch: 2, TextLen: 8})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		if _, err := l.Next(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/batch")
	st := l.Stats()
	during := float64(st.ReaderBytes-open) / float64(st.Batches)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
	b.ReportMetric(float64(open), "open-copied-B")
	b.ReportMetric(during, "copied-B/batch")
	b.ReportMetric(float64(open)/float64(l.BatchesPerEpoch())+during, "amortized-copied-B/batch")
	b.ReportMetric(float64(st.DecodedBytes)/float64(st.Batches), "decoded-B/batch")
}

func BenchmarkLoaderIPC(b *testing.B) {
	ipc, _ := benchFiles(b)
	benchLoader(b, ipc)
}

func BenchmarkLoaderParquet(b *testing.B) {
	_, pq := benchFiles(b)
	benchLoader(b, pq)
}

// BenchmarkOpenParquet and BenchmarkOpenIPC time opening (and checking) the 512-video file.
func BenchmarkOpenIPC(b *testing.B) {
	ipc, _ := benchFiles(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := Open(ipc)
		if err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
}

func BenchmarkOpenParquet(b *testing.B) {
	_, pq := benchFiles(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := Open(pq)
		if err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
}

// BenchmarkSynth: videos/s of WriteSynth (render, latent map, text, Arrow IPC write) at the
// default geometry, all cores.
func BenchmarkSynth(b *testing.B) {
	dir := b.TempDir()
	o := SynthOptions{Count: 256, Heldout: 0, Frames: 8, Size: 32, TextDim: 32, Seed: 2}
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		if _, err := WriteSynth(dir, o, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*o.Count)/b.Elapsed().Seconds(), "videos/s")
	b.ReportMetric(float64(b.N*o.Count)/(cpuTime()-cpu0).Seconds(), "videos/cpu-s")
}
