package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/fewstep/fewstep/data"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// runCLI runs the fewstep command line in-process and returns stdout, stderr and the error.
// Flags are reset to their defaults first (cobra keeps values between Execute calls).
func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var reset func(c *cobra.Command)
	reset = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if sv, ok := f.Value.(pflag.SliceValue); ok {
				sv.Replace(nil)
			} else {
				f.Value.Set(f.DefValue)
			}
			f.Changed = false
		})
		for _, s := range c.Commands() {
			reset(s)
		}
	}
	reset(rootCmd)
	var out, errb bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetErr(&errb)
	rootCmd.SetArgs(args)
	err := rootCmd.Execute()
	return out.String(), errb.String(), err
}

// writeTwins writes the same FastVideo-style rows with arrow-go's own writers (not the project's):
// a Parquet file (pqarrow, snappy, row groups of 4) and an Arrow IPC file. Latents are dtype
// (float32, or bfloat16 values written as raw 16-bit words by hand); returns the expected row sums.
func writeTwins(t *testing.T, dir, dtype string, n int) (pq, ai string, want []float64) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 11))
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "vae_latent_bytes", Type: arrow.BinaryTypes.Binary},
		{Name: "vae_latent_shape", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64)},
		{Name: "vae_latent_dtype", Type: arrow.BinaryTypes.String},
		{Name: "caption", Type: arrow.BinaryTypes.String},
	}, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	for i := 0; i < n; i++ {
		var raw []byte
		sum := 0.0
		for k := 0; k < 16*3*4*4; k++ {
			x := float32(rng.NormFloat64())
			if dtype == "bfloat16" {
				h := uint16(math.Float32bits(x) >> 16) // N(0,1) truncated to bf16: an exact bf16 value
				x = math.Float32frombits(uint32(h) << 16)
				raw = binary.LittleEndian.AppendUint16(raw, h)
			} else {
				raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(x))
			}
			sum += float64(x)
		}
		want = append(want, sum)
		b.Field(0).(*array.StringBuilder).Append("row" + string(rune('a'+i)))
		b.Field(1).(*array.BinaryBuilder).Append(raw)
		lb := b.Field(2).(*array.ListBuilder)
		lb.Append(true)
		lb.ValueBuilder().(*array.Int64Builder).AppendValues([]int64{16, 3, 4, 4}, nil)
		b.Field(3).(*array.StringBuilder).Append(dtype)
		b.Field(4).(*array.StringBuilder).Append("a caption")
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	pq, ai = filepath.Join(dir, "fv.parquet"), filepath.Join(dir, "fv.arrow")
	f, _ := os.Create(pq)
	tbl := array.NewTableFromRecords(schema, []arrow.RecordBatch{rec})
	defer tbl.Release()
	if err := pqarrow.WriteTable(tbl, f, 4, parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Snappy)), pqarrow.DefaultWriterProps()); err != nil {
		t.Fatal(err)
	}
	g, _ := os.Create(ai)
	w, err := ipc.NewFileWriter(g, ipc.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	w.Close()
	g.Close()
	return pq, ai, want
}

// `fewstep data inspect --rows` on a FastVideo-style Parquet file and its Arrow IPC twin: the same
// per-row sums, equal to the float64 sums of the values written, for float32 and bfloat16.
func TestInspectRowsTwins(t *testing.T) {
	for _, dtype := range []string{"float32", "bfloat16"} {
		dir := t.TempDir()
		pq, ai, want := writeTwins(t, dir, dtype, 9)
		var sums [2][]float64
		for k, p := range []string{pq, ai} {
			out, _, err := runCLI(t, "data", "inspect", "--rows", "--json", p)
			if err != nil {
				t.Fatal(err)
			}
			var reps []data.Report
			if err := json.Unmarshal([]byte(out), &reps); err != nil {
				t.Fatal(err)
			}
			for _, rs := range reps[0].RowStat {
				if rs.Tensors[0].DType != dtype {
					t.Fatalf("%s: dtype %s", p, rs.Tensors[0].DType)
				}
				sums[k] = append(sums[k], rs.Tensors[0].Sum)
			}
			// the text form prints the same sums
			txt, _, err := runCLI(t, "data", "inspect", "--rows", p)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(regexp.MustCompile(`(?m)^  row \d+ `).FindAllString(txt, -1)); got != len(want) {
				t.Fatalf("%s: %d row lines in\n%s", p, got, txt)
			}
		}
		for i := range want {
			t.Logf("%s row %d: parquet sum %v, arrow sum %v, written %v", dtype, i, sums[0][i], sums[1][i], want[i])
			if sums[0][i] != want[i] || sums[1][i] != want[i] {
				t.Errorf("%s row %d: parquet %v, ipc %v, written %v", dtype, i, sums[0][i], sums[1][i], want[i])
			}
		}
	}
}

// `fewstep data synth` twice with the same flags: byte-identical files (same sha256).
func TestSynthCLIDeterministic(t *testing.T) {
	var hashes []string
	for _, d := range []string{t.TempDir(), t.TempDir()} {
		out, _, err := runCLI(t, "data", "synth", "--out", d, "--count", "24", "--heldout-count", "8", "--frames", "4", "--seed", "5")
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, strings.Join(regexp.MustCompile(`sha256 [0-9a-f]{64}`).FindAllString(out, -1), " "))
		if _, err := os.Stat(filepath.Join(d, "job.yaml")); err != nil {
			t.Fatal("no job.yaml beside the data:", err)
		}
	}
	if hashes[0] == "" || hashes[0] != hashes[1] {
		t.Fatalf("hashes differ: %q vs %q", hashes[0], hashes[1])
	}
}

// Bad data through the CLI: an error naming the file, row and column (main exits non-zero).
func TestCLIBadData(t *testing.T) {
	dir := t.TempDir()
	_, ai, _ := writeTwins(t, dir, "float32", 3)
	b, _ := os.ReadFile(ai)
	bad := filepath.Join(dir, "trunc.arrow")
	os.WriteFile(bad, b[:len(b)/2], 0o644)
	_, _, err := runCLI(t, "data", "inspect", bad)
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("truncated file: %v", err)
	}
	_, _, err = runCLI(t, "data", "synth", "--out", dir, "--size", "30")
	if err == nil || !strings.Contains(err.Error(), "size") {
		t.Fatalf("size 30: %v", err)
	}
}

// The job flags: file < FEWSTEP_* < --set; the resolved job is printed with -v only; unknown keys
// name the file.
func TestJobFlags(t *testing.T) {
	dir := t.TempDir()
	job := filepath.Join(dir, "job.yaml")
	os.WriteFile(job, []byte("data:\n  synth:\n    count: 30\n    heldout_count: 2\n    frames: 3\n"), 0o644)
	t.Setenv("FEWSTEP_DATA_SYNTH_FRAMES", "2")
	out := filepath.Join(dir, "o")
	stdout, stderr, err := runCLI(t, "data", "synth", "--config", job, "--set", "data.synth.heldout_count=4", "--out", out, "-v")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "30 train + 4 held-out videos (2 frames") {
		t.Fatalf("precedence: %s", stdout)
	}
	if !strings.Contains(stderr, "resolved job") || !strings.Contains(stderr, "heldout_count: 4") {
		t.Fatalf("resolved job not printed with -v: %s", stderr)
	}
	if _, stderr, err = runCLI(t, "data", "synth", "--config", job, "--out", out); err != nil || strings.Contains(stderr, "resolved job") {
		t.Fatalf("resolved job printed without -v (err %v): %s", err, stderr)
	}
	os.WriteFile(job, []byte("data:\n  synth:\n    cuont: 3\n"), 0o644)
	_, _, err = runCLI(t, "data", "synth", "--config", job, "--out", out)
	if err == nil || !strings.Contains(err.Error(), "data.synth.cuont") || !strings.Contains(err.Error(), job) {
		t.Fatalf("unknown key: %v", err)
	}
}

// The synth bar's first update (after the first block of 64 videos) shows the rate since the command
// started writing, not 64 videos over the ~0 s since the bar's first render (millions of videos/s).
func TestSynthBarFirstRate(t *testing.T) {
	out, stderr, err := runCLI(t, "data", "synth", "--out", t.TempDir(), "--count", "128", "--heldout-count", "64", "--frames", "8", "--size", "16")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`in [0-9.]+s: ([0-9]+) videos/s`).FindStringSubmatch(out)
	first := regexp.MustCompile(`\(64/192, ([0-9]+) videos/s\)`).FindStringSubmatch(stderr)
	if m == nil || first == nil {
		t.Fatalf("no overall rate in %q or no first update (64 of 192 videos) with a rate in %q", out, stderr)
	}
	all, _ := strconv.ParseFloat(m[1], 64)
	rate, _ := strconv.ParseFloat(first[1], 64)
	t.Logf("first update %g videos/s, the whole command %g videos/s", rate, all)
	if rate > 10*all+100 { // the first block may run faster than the average, not 10× (+100: a tiny all)
		t.Errorf("first update shows %g videos/s, the whole command ran at %g videos/s", rate, all)
	}
}
