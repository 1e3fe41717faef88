package data

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// fvRow is one row of a FastVideo-style file, made without the project's writer.
type fvRow struct {
	id, caption  string
	lat          []float32 // values exactly representable in the stored dtype
	latShape     []int64
	latDType     string
	txt          []float32
	txtShape     []int64
	wantLatSum   float64
	wantTextSum  float64
	latRaw, tRaw []byte
}

// makeFVRows makes rows with random values; bfloat16 values are random bf16 bit patterns
// (so the expected sums are exact), stored by hand as the top halves of float32 words.
func makeFVRows(rng *rand.Rand, n int, dtype string) []fvRow {
	rows := make([]fvRow, n)
	for i := range rows {
		r := &rows[i]
		r.id = "vid" + string(rune('A'+i))
		r.caption = "caption " + r.id
		r.latShape = []int64{16, 2, 4, 6}
		r.latDType = dtype
		ne := 16 * 2 * 4 * 6
		for k := 0; k < ne; k++ {
			x := float32(rng.NormFloat64() * 3)
			switch dtype {
			case "float32":
				r.latRaw = binary.LittleEndian.AppendUint32(r.latRaw, math.Float32bits(x))
			case "bfloat16":
				h := uint16(math.Float32bits(x) >> 16) // truncation: an exact bf16 value
				x = math.Float32frombits(uint32(h) << 16)
				r.latRaw = binary.LittleEndian.AppendUint16(r.latRaw, h)
			}
			r.lat = append(r.lat, x)
			r.wantLatSum += float64(x)
		}
		L := 1 + rng.IntN(5)
		r.txtShape = []int64{int64(L), 8}
		for k := 0; k < L*8; k++ {
			x := rng.Float32()
			r.txt = append(r.txt, x)
			r.tRaw = binary.LittleEndian.AppendUint32(r.tRaw, math.Float32bits(x))
			r.wantTextSum += float64(x)
		}
	}
	return rows
}

// fvRecord builds the rows as one Arrow record in FastVideo's schema (with its extra columns).
func fvRecord(rows []fvRow) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "vae_latent_bytes", Type: arrow.BinaryTypes.Binary},
		{Name: "vae_latent_shape", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64)},
		{Name: "vae_latent_dtype", Type: arrow.BinaryTypes.String},
		{Name: "text_embedding_bytes", Type: arrow.BinaryTypes.Binary},
		{Name: "text_embedding_shape", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64)},
		{Name: "text_embedding_dtype", Type: arrow.BinaryTypes.String},
		{Name: "file_name", Type: arrow.BinaryTypes.String},
		{Name: "caption", Type: arrow.BinaryTypes.String},
		{Name: "media_type", Type: arrow.BinaryTypes.String},
		{Name: "width", Type: arrow.PrimitiveTypes.Int64},
		{Name: "num_frames", Type: arrow.PrimitiveTypes.Int64},
	}, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	shape := func(fb array.Builder, s []int64) {
		lb := fb.(*array.ListBuilder)
		lb.Append(true)
		lb.ValueBuilder().(*array.Int64Builder).AppendValues(s, nil)
	}
	for _, r := range rows {
		b.Field(0).(*array.StringBuilder).Append(r.id)
		b.Field(1).(*array.BinaryBuilder).Append(r.latRaw)
		shape(b.Field(2), r.latShape)
		b.Field(3).(*array.StringBuilder).Append(r.latDType)
		b.Field(4).(*array.BinaryBuilder).Append(r.tRaw)
		shape(b.Field(5), r.txtShape)
		b.Field(6).(*array.StringBuilder).Append("float32")
		b.Field(7).(*array.StringBuilder).Append(r.id + ".mp4")
		b.Field(8).(*array.StringBuilder).Append(r.caption)
		b.Field(9).(*array.StringBuilder).Append("video")
		b.Field(10).(*array.Int64Builder).Append(48)
		b.Field(11).(*array.Int64Builder).Append(5)
	}
	return b.NewRecordBatch()
}

func writeParquetIndependent(t testing.TB, path string, rec arrow.RecordBatch) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	tbl := array.NewTableFromRecords(rec.Schema(), []arrow.RecordBatch{rec})
	defer tbl.Release()
	props := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Snappy))
	if err := pqarrow.WriteTable(tbl, f, 3, props, pqarrow.DefaultWriterProps()); err != nil {
		t.Fatal(err)
	}
}

func writeIPCIndependent(t testing.TB, path string, rec arrow.RecordBatch) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := ipc.NewFileWriter(f, ipc.WithSchema(rec.Schema()))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// FastVideo-style Parquet (written by arrow-go's pqarrow, in row groups of 3) and its Arrow IPC twin
// give the same per-row statistics, equal to the sums of the values written, for float32 and
// bfloat16 latents; convert turns the Parquet into an IPC file with the same statistics.
func TestParquetIPCTwinsAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 3))
	for _, dtype := range []string{"float32", "bfloat16"} {
		dir := t.TempDir()
		rows := makeFVRows(rng, 7, dtype)
		rec := fvRecord(rows)
		pq, ai := filepath.Join(dir, "fv.parquet"), filepath.Join(dir, "fv.arrow")
		writeParquetIndependent(t, pq, rec)
		writeIPCIndependent(t, ai, rec)
		rec.Release()
		conv := filepath.Join(dir, "conv", "fv.arrow")
		if _, err := Convert(pq, conv); err != nil {
			t.Fatal(err)
		}
		var reps [3]Report
		for k, p := range []string{pq, ai, conv} {
			r, err := Inspect(p, true)
			if err != nil {
				t.Fatal(err)
			}
			reps[k] = r[0]
		}
		for k, rep := range reps {
			if rep.Rows != len(rows) || len(rep.RowStat) != len(rows) {
				t.Fatalf("%s %s: %d rows", dtype, rep.Path, rep.Rows)
			}
			for i, rs := range rep.RowStat {
				if rs.ID != rows[i].id {
					t.Fatalf("%s row %d id %s", rep.Path, i, rs.ID)
				}
				lat, txt := rs.Tensors[1], rs.Tensors[0] // sorted: text_embedding, vae_latent
				if lat.Name != "vae_latent" || txt.Name != "text_embedding" || lat.DType != dtype {
					t.Fatalf("%+v", rs.Tensors)
				}
				// float64 sums of the same float32 values in the same order: equal to the last bit
				if lat.Sum != rows[i].wantLatSum || txt.Sum != rows[i].wantTextSum {
					t.Errorf("%s %s row %d: sums %v %v, want %v %v", dtype, rep.Path, i, lat.Sum, txt.Sum, rows[i].wantLatSum, rows[i].wantTextSum)
				}
				if k > 0 {
					a, b := lat, reps[0].RowStat[i].Tensors[1]
					if a.Sum != b.Sum || a.Min != b.Min || a.Max != b.Max || a.Mean != b.Mean {
						t.Errorf("%s row %d: parquet %+v, ipc %+v", dtype, i, b, a)
					}
				}
			}
		}
	}
}

// Arrow IPC rows alias the memory-mapped file: no latent byte is copied before Decode.
func TestIPCZeroCopy(t *testing.T) {
	dir := t.TempDir()
	o := SynthOptions{Count: 20, Heldout: 0, Frames: 2, Size: 16, TextDim: 4, Seed: 1}
	p, err := WriteSynth(dir, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(p.Train)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mm := f.Mapped()
	lo, hi := uintptr(unsafe.Pointer(&mm[0])), uintptr(unsafe.Pointer(&mm[0]))+uintptr(len(mm))
	for i := 0; i < f.NumRows(); i++ {
		row, _ := f.Row(i)
		tr, err := row.Tensor(Latent)
		if err != nil {
			t.Fatal(err)
		}
		a := uintptr(unsafe.Pointer(&tr.Bytes[0]))
		if a < lo || a+uintptr(len(tr.Bytes)) > hi {
			t.Fatalf("row %d latent bytes at %#x are not inside the mapping [%#x, %#x)", i, a, lo, hi)
		}
	}
	if n := f.Alloc.Bytes(); n > 64<<10 {
		t.Fatalf("opening the IPC file allocated %d bytes", n)
	}
}

// --- bad data: every case is an error naming file, row and column; never a panic ---

func synthFile(t *testing.T) string {
	t.Helper()
	p, err := WriteSynth(t.TempDir(), SynthOptions{Count: 12, Heldout: 0, Frames: 2, Size: 16, TextDim: 4, Seed: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p.Train
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", parts)
	}
	for _, s := range parts {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q does not mention %q", err, s)
		}
	}
}

func TestBadTruncated(t *testing.T) {
	for _, ext := range []string{".arrow", ".parquet"} {
		src := synthFile(t)
		if ext == ".parquet" {
			d, _ := Open(src)
			src = filepath.Join(t.TempDir(), "x.parquet")
			writeProjectParquet(t, d, src)
			d.Close()
		}
		b, _ := os.ReadFile(src)
		for _, n := range []int{0, 7, len(b) / 3, len(b) - 9} {
			p := filepath.Join(t.TempDir(), "trunc"+ext)
			os.WriteFile(p, b[:n], 0o644)
			_, err := Open(p)
			wantErr(t, err, p)
		}
	}
}

func TestBadCorruptNeverPanics(t *testing.T) {
	src := synthFile(t)
	b, _ := os.ReadFile(src)
	p := filepath.Join(t.TempDir(), "corrupt.arrow")
	corruptTrials(t, b, p, 300, func() {
		if reps, err := Inspect(p, true); err != nil {
			wantErr(t, err, p)
		} else if len(reps) != 1 {
			t.Fatal("no report")
		}
	})
	// garbage that is not a dataset at all
	os.WriteFile(p, []byte(strings.Repeat("not arrow ", 100)), 0o644)
	_, err := Open(p)
	wantErr(t, err, p)
}

// corruptTrials writes `trials` corrupted copies of the file bytes b to p (1–8 random bytes changed,
// half of them in the last 2 KiB where the footer and metadata live) and runs check on each; a panic
// anywhere fails the test.
func corruptTrials(t *testing.T, b []byte, p string, trials int, check func()) {
	t.Helper()
	rng := rand.New(rand.NewPCG(rand.Uint64(), 4))
	for trial := 0; trial < trials; trial++ {
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
			check()
		}()
	}
}

// rewrite writes a synthetic file's rows through the project's writer with one change per row.
func rewrite(t *testing.T, tensors []string, edit func(i int, ts []Tensor) []Tensor) string {
	t.Helper()
	d, err := Open(synthFile(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := filepath.Join(t.TempDir(), "bad.arrow")
	w, err := NewWriter(p, tensors, 5)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < d.NumRows(); i++ {
		row, _ := d.Row(i)
		var ts []Tensor
		for _, x := range []string{Latent, TextEmb} {
			tr, _ := row.Tensor(x)
			ts = append(ts, Tensor{Name: x, Shape: tr.Shape, DType: tr.DType, Bytes: append([]byte(nil), tr.Bytes...)})
		}
		if err := w.Append(row.ID, row.Caption, edit(i, ts)...); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBadMissingColumn(t *testing.T) {
	// a file with the text triplet but no latent: the loader asks for vae_latent
	p := rewrite(t, []string{TextEmb}, func(i int, ts []Tensor) []Tensor { return ts[1:] })
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = NewLoader(d, LoaderConfig{BatchSize: 2, TextLen: 8})
	wantErr(t, err, p, "row 0", "vae_latent_bytes", "missing column")

	// a triplet with a column missing: vae_latent_shape absent
	rec := fvRecord(makeFVRows(rand.New(rand.NewPCG(1, 2)), 3, "float32"))
	defer rec.Release()
	cut, _ := rec.Schema().FieldIndices("vae_latent_shape")[0], 0
	var fields []arrow.Field
	var cols []arrow.Array
	for i, f := range rec.Schema().Fields() {
		if i != cut {
			fields = append(fields, f)
			cols = append(cols, rec.Column(i))
		}
	}
	r2 := array.NewRecordBatch(arrow.NewSchema(fields, nil), cols, rec.NumRows())
	defer r2.Release()
	q := filepath.Join(t.TempDir(), "noshape.parquet")
	writeParquetIndependent(t, q, r2)
	_, err = Open(q)
	wantErr(t, err, q, "missing column vae_latent_shape")
}

func TestBadUnknownDType(t *testing.T) {
	rows := makeFVRows(rand.New(rand.NewPCG(5, 6)), 4, "float32")
	rows[2].latDType = "int8"
	rec := fvRecord(rows)
	defer rec.Release()
	p := filepath.Join(t.TempDir(), "dtype.arrow")
	writeIPCIndependent(t, p, rec)
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = NewLoader(d, LoaderConfig{BatchSize: 2, TextLen: 8})
	wantErr(t, err, p, "row 2", "vae_latent_dtype", `unknown dtype "int8"`)
	_, err = Inspect(p, false)
	wantErr(t, err, p, "row 2", "vae_latent_dtype")
}

func TestBadByteLength(t *testing.T) {
	rows := makeFVRows(rand.New(rand.NewPCG(7, 8)), 4, "bfloat16")
	rows[3].latRaw = rows[3].latRaw[:len(rows[3].latRaw)-2]
	rec := fvRecord(rows)
	defer rec.Release()
	p := filepath.Join(t.TempDir(), "len.parquet")
	writeParquetIndependent(t, p, rec)
	_, err := Inspect(p, true)
	wantErr(t, err, p, "row 3", "vae_latent_bytes", "shape [16 2 4 6] of bfloat16 needs 1536")
}

func TestBadShapeVsConfig(t *testing.T) {
	p := synthFile(t) // latents [48, 2, 4, 4], text [5, 4]
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = NewLoader(d, LoaderConfig{BatchSize: 2, TextLen: 8, LatentShape: []int{48, 8, 4, 4}})
	wantErr(t, err, p, "row 0", "vae_latent_shape", "[48 2 4 4]", "[48 8 4 4]")
	_, err = NewLoader(d, LoaderConfig{BatchSize: 2, TextLen: 8, TextDim: 32})
	wantErr(t, err, p, "row 0", "text_embedding_shape", "text_dim 4", "32")
	_, err = NewLoader(d, LoaderConfig{BatchSize: 2, TextLen: 3})
	wantErr(t, err, p, "row 0", "text_embedding_shape", "5 tokens", "text_len 3")
	_, err = NewLoader(d, LoaderConfig{BatchSize: 2, TextLen: 8, Mean: make([]float64, 16), Std: make([]float64, 16)})
	wantErr(t, err, p, "row 0", "48 channels", "16")
	// one row whose shape disagrees with the others
	q := rewrite(t, []string{Latent, TextEmb}, func(i int, ts []Tensor) []Tensor {
		if i == 4 {
			ts[0].Shape = []int{48, 4, 2, 4}
		}
		return ts
	})
	d2, err := Open(q)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	_, err = NewLoader(d2, LoaderConfig{BatchSize: 2, TextLen: 8})
	wantErr(t, err, q, "row 4", "vae_latent_shape", "[48 4 2 4]")
}

// writeProjectParquet copies a dataset into a Parquet file through the project's writer.
func writeProjectParquet(t testing.TB, d *Dataset, path string) {
	w, err := NewWriter(path, []string{Latent, TextEmb}, 64)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < d.NumRows(); i++ {
		row, _ := d.Row(i)
		var ts []Tensor
		for _, x := range []string{Latent, TextEmb} {
			tr, err := row.Tensor(x)
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, Tensor{Name: x, Shape: tr.Shape, DType: tr.DType, Bytes: tr.Bytes})
		}
		if err := w.Append(row.ID, row.Caption, ts...); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// inspect and convert stream Parquet a record batch at a time; the converted file holds the same
// rows, bytes for bytes, and loads through the zero-copy path.
func TestScanAndConvertStream(t *testing.T) {
	d, err := Open(synthFile(t)) // 12 rows
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dir := t.TempDir()
	pq := filepath.Join(dir, "in", "a.parquet")
	os.MkdirAll(filepath.Dir(pq), 0o755)
	writeProjectParquet(t, d, pq)
	var sizes []int
	err = ScanFile(pq, 5, func(f *File, rec arrow.RecordBatch, base int) error {
		sizes = append(sizes, int(rec.NumRows()))
		for _, row := range f.Rows(rec, base) {
			want, _ := d.Row(row.Index)
			a, err1 := row.Tensor(Latent)
			b, err2 := want.Tensor(Latent)
			if err1 != nil || err2 != nil || string(a.Bytes) != string(b.Bytes) || row.ID != want.ID {
				t.Fatalf("row %d differs (%v %v)", row.Index, err1, err2)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != 3 || sizes[0] != 5 || sizes[2] != 2 {
		t.Fatalf("batch sizes %v, want [5 5 2]", sizes)
	}
	outs, err := Convert(filepath.Join(dir, "in"), filepath.Join(dir, "out"))
	if err != nil || len(outs) != 1 || outs[0] != filepath.Join(dir, "out", "a.arrow") {
		t.Fatal(outs, err)
	}
	c, err := Open(outs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.NumRows() != d.NumRows() || c.Files[0].Mapped() == nil {
		t.Fatal("converted file")
	}
	for i := 0; i < d.NumRows(); i++ {
		a, _ := c.Row(i)
		b, _ := d.Row(i)
		for _, x := range []string{Latent, TextEmb} {
			ta, _ := a.Tensor(x)
			tb, _ := b.Tensor(x)
			if string(ta.Bytes) != string(tb.Bytes) || a.Caption != b.Caption {
				t.Fatalf("row %d %s differs after convert", i, x)
			}
		}
	}
}
