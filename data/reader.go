package data

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/fewstep/fewstep/kernels"
)

// CountingAllocator is an Arrow allocator that counts the bytes it hands out: the bytes a reader
// copies out of a file into Go memory (Parquet decoding, IPC metadata). Memory-mapped IPC record
// bodies are not allocated: they alias the mapping.
type CountingAllocator struct {
	memory.Allocator
	n atomic.Int64
}

func NewCountingAllocator() *CountingAllocator {
	return &CountingAllocator{Allocator: memory.NewGoAllocator()}
}

func (a *CountingAllocator) Allocate(size int) []byte {
	a.n.Add(int64(size))
	return a.Allocator.Allocate(size)
}

func (a *CountingAllocator) Reallocate(size int, b []byte) []byte {
	if size > len(b) {
		a.n.Add(int64(size - len(b)))
	}
	return a.Allocator.Reallocate(size, b)
}

// Bytes is the total allocated so far.
func (a *CountingAllocator) Bytes() int64 { return a.n.Load() }

// triplet holds the column indices of one tensor (-1 = absent).
type triplet struct{ bytes, shape, dtype int }

// File is one open dataset file. Arrow IPC files are memory-mapped and their record batches alias
// the mapping (zero-copy); Parquet files are decoded into memory at open, through pqarrow.
type File struct {
	Path    string
	Parquet bool
	Schema  *arrow.Schema
	Tensors []string // tensors present (name of each X_bytes/X_shape/X_dtype triplet), sorted

	mm     []byte
	ipcr   *ipc.FileReader
	recs   []arrow.RecordBatch
	starts []int // first row of each record batch; len(recs)+1 entries
	id     int   // column index of id (-1 = none)
	cap    int   // column index of caption (-1 = none)
	cols   map[string]triplet
	Alloc  *CountingAllocator // bytes copied into Go memory by the reader
}

// NumRows is the number of rows.
func (f *File) NumRows() int { return f.starts[len(f.starts)-1] }

// Mapped is the memory-mapped file (nil for Parquet).
func (f *File) Mapped() []byte { return f.mm }

// OpenFile opens one Arrow IPC (*.arrow, *.arrows, *.ipc, *.feather) or Parquet (*.parquet) file
// and checks its schema and the structure of every record batch. Anything wrong is an error naming
// the file; nothing panics.
func OpenFile(path string) (f *File, err error) {
	f = &File{Path: path, Parquet: strings.HasSuffix(strings.ToLower(path), ".parquet"), Alloc: NewCountingAllocator()}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("data: %s: corrupt file: %v", path, r)
		}
		if err != nil {
			f.Close()
			f = nil
		}
	}()
	if f.Parquet {
		err = f.openParquet()
	} else {
		err = f.openIPC()
	}
	if err != nil {
		return f, err
	}
	if err = f.checkSchema(); err != nil {
		return f, err
	}
	f.starts = make([]int, len(f.recs)+1)
	for i, r := range f.recs {
		if err := f.validate(r, i); err != nil {
			return f, err
		}
		f.starts[i+1] = f.starts[i] + int(r.NumRows())
	}
	return f, nil
}

// validate checks the structure (offsets, lengths) of every column of record batch i.
func (f *File) validate(r arrow.RecordBatch, i int) error {
	for c := 0; c < int(r.NumCols()); c++ {
		if v, ok := r.Column(c).(interface{ ValidateFull() error }); ok {
			if err := v.ValidateFull(); err != nil {
				return fmt.Errorf("data: %s: record batch %d, column %s: corrupt: %w", f.Path, i, f.Schema.Field(c).Name, err)
			}
		}
	}
	return nil
}

// ScanFile visits a file's rows in order, holding one record batch at a time: Arrow IPC batches
// alias the mapping, Parquet is decoded batchRows rows at a time (so inspect and convert work on
// files larger than memory). fn gets each record batch and the file row of its first row; rows
// are f.Rows(rec, base). A corrupt file is an error naming it, never a panic.
func ScanFile(path string, batchRows int, fn func(f *File, rec arrow.RecordBatch, base int) error) (err error) {
	if !strings.HasSuffix(strings.ToLower(path), ".parquet") {
		f, err := OpenFile(path)
		if err != nil {
			return err
		}
		defer f.Close()
		for i, rec := range f.recs {
			if err := fn(f, rec, f.starts[i]); err != nil {
				return err
			}
		}
		return nil
	}
	f := &File{Path: path, Parquet: true, Alloc: NewCountingAllocator()}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("data: %s: corrupt file: %v", path, r)
		}
	}()
	fd, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer fd.Close()
	pr, err := file.NewParquetReader(fd, file.WithReadProps(parquet.NewReaderProperties(f.Alloc)))
	if err != nil {
		return fmt.Errorf("data: %s: not a valid Parquet file (truncated or corrupt?): %w", path, err)
	}
	defer pr.Close()
	fr, err := pqarrow.NewFileReader(pr, pqarrow.ArrowReadProperties{BatchSize: int64(max(batchRows, 1))}, f.Alloc)
	if err != nil {
		return fmt.Errorf("data: %s: %w", path, err)
	}
	if f.Schema, err = fr.Schema(); err != nil {
		return fmt.Errorf("data: %s: %w", path, err)
	}
	if err := f.checkSchema(); err != nil {
		return err
	}
	rr, err := fr.GetRecordReader(context.Background(), nil, nil)
	if err != nil {
		return fmt.Errorf("data: %s: %w", path, err)
	}
	defer rr.Release()
	base := 0
	for i := 0; rr.Next(); i++ {
		rec := rr.RecordBatch()
		if err := f.validate(rec, i); err != nil {
			return err
		}
		if err := fn(f, rec, base); err != nil {
			return err
		}
		base += int(rec.NumRows())
	}
	if err := rr.Err(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("data: %s: not a valid Parquet file (truncated or corrupt?): %w", path, err)
	}
	return nil
}

// Rows are the rows of a record batch of f whose first row is file row base.
func (f *File) Rows(rec arrow.RecordBatch, base int) []Row {
	out := make([]Row, rec.NumRows())
	for r := range out {
		out[r] = f.rowOf(rec, r, base+r)
	}
	return out
}

func (f *File) openIPC() error {
	fd, err := os.Open(f.Path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	if st.Size() == 0 {
		return fmt.Errorf("data: %s: empty file (not Arrow IPC)", f.Path)
	}
	f.mm, err = mmapFile(fd, int(st.Size()))
	if err != nil {
		return fmt.Errorf("data: %s: mmap: %w", f.Path, err)
	}
	if err := verifyIPCFile(f.mm); err != nil {
		return fmt.Errorf("data: %s: not a valid Arrow IPC file: %w", f.Path, err)
	}
	f.ipcr, err = ipc.NewMappedFileReader(f.mm, ipc.WithAllocator(f.Alloc))
	if err != nil {
		return fmt.Errorf("data: %s: not a valid Arrow IPC file (truncated or corrupt?): %w", f.Path, err)
	}
	f.Schema = f.ipcr.Schema()
	for i := 0; i < f.ipcr.NumRecords(); i++ {
		r, err := f.ipcr.RecordBatchAt(i)
		if err != nil {
			return fmt.Errorf("data: %s: record batch %d: %w", f.Path, i, err)
		}
		f.recs = append(f.recs, r)
	}
	return nil
}

func (f *File) openParquet() error {
	fd, err := os.Open(f.Path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer fd.Close()
	tbl, err := pqarrow.ReadTable(context.Background(), fd, parquet.NewReaderProperties(f.Alloc),
		pqarrow.ArrowReadProperties{Parallel: false, BatchSize: 1 << 16}, f.Alloc)
	if err != nil {
		return fmt.Errorf("data: %s: not a valid Parquet file (truncated or corrupt?): %w", f.Path, err)
	}
	defer tbl.Release()
	f.Schema = tbl.Schema()
	tr := array.NewTableReader(tbl, 1<<30)
	defer tr.Release()
	for tr.Next() {
		r := tr.RecordBatch()
		r.Retain()
		f.recs = append(f.recs, r)
	}
	if err := tr.Err(); err != nil {
		return fmt.Errorf("data: %s: %w", f.Path, err)
	}
	return nil
}

// checkSchema finds id, caption and the tensor triplets, checking their Arrow types.
func (f *File) checkSchema() error {
	f.cols = map[string]triplet{}
	f.id, f.cap = -1, -1
	idx := func(name string) int {
		is := f.Schema.FieldIndices(name)
		if len(is) == 0 {
			return -1
		}
		return is[0]
	}
	isStr := func(t arrow.DataType) bool {
		return t.ID() == arrow.STRING || t.ID() == arrow.LARGE_STRING
	}
	if i := idx(ColID); i >= 0 {
		if !isStr(f.Schema.Field(i).Type) {
			return fmt.Errorf("data: %s: column %s is %s, want string", f.Path, ColID, f.Schema.Field(i).Type)
		}
		f.id = i
	}
	if i := idx(ColCaption); i >= 0 {
		if !isStr(f.Schema.Field(i).Type) {
			return fmt.Errorf("data: %s: column %s is %s, want string", f.Path, ColCaption, f.Schema.Field(i).Type)
		}
		f.cap = i
	}
	for _, fl := range f.Schema.Fields() {
		for _, suf := range []string{"_bytes", "_shape", "_dtype"} {
			x, ok := strings.CutSuffix(fl.Name, suf)
			if !ok {
				continue
			}
			if _, seen := f.cols[x]; seen {
				continue
			}
			t := triplet{idx(BytesCol(x)), idx(ShapeCol(x)), idx(DTypeCol(x))}
			for _, c := range []struct {
				i    int
				name string
			}{{t.bytes, BytesCol(x)}, {t.shape, ShapeCol(x)}, {t.dtype, DTypeCol(x)}} {
				if c.i < 0 {
					return fmt.Errorf("data: %s: missing column %s (tensor %s needs %s, %s and %s)", f.Path, c.name, x, BytesCol(x), ShapeCol(x), DTypeCol(x))
				}
			}
			if id := f.Schema.Field(t.bytes).Type.ID(); id != arrow.BINARY && id != arrow.LARGE_BINARY {
				return fmt.Errorf("data: %s: column %s is %s, want binary", f.Path, BytesCol(x), f.Schema.Field(t.bytes).Type)
			}
			if lt, ok := f.Schema.Field(t.shape).Type.(*arrow.ListType); !ok || (lt.Elem().ID() != arrow.INT64 && lt.Elem().ID() != arrow.INT32) {
				return fmt.Errorf("data: %s: column %s is %s, want list<int64>", f.Path, ShapeCol(x), f.Schema.Field(t.shape).Type)
			}
			if !isStr(f.Schema.Field(t.dtype).Type) {
				return fmt.Errorf("data: %s: column %s is %s, want string", f.Path, DTypeCol(x), f.Schema.Field(t.dtype).Type)
			}
			f.cols[x] = t
			f.Tensors = append(f.Tensors, x)
		}
	}
	sort.Strings(f.Tensors)
	return nil
}

// Close releases the record batches and unmaps the file.
func (f *File) Close() error {
	for _, r := range f.recs {
		r.Release()
	}
	f.recs = nil
	if f.ipcr != nil {
		f.ipcr.Close()
		f.ipcr = nil
	}
	if f.mm != nil {
		err := munmap(f.mm)
		f.mm = nil
		return err
	}
	return nil
}

// Row is one row of a file; its tensors alias the file's memory.
type Row struct {
	File    string // path
	Index   int    // row in the file
	ID      string
	Caption string
	f       *File
	rec     arrow.RecordBatch
	r       int // row in rec
}

// Row returns row i of the file.
func (f *File) Row(i int) (Row, error) {
	if i < 0 || i >= f.NumRows() {
		return Row{}, fmt.Errorf("data: %s: row %d out of range (%d rows)", f.Path, i, f.NumRows())
	}
	b := sort.SearchInts(f.starts, i+1) - 1
	return f.rowOf(f.recs[b], i-f.starts[b], i), nil
}

// rowOf is row r of record batch rec, row i of the file.
func (f *File) rowOf(rec arrow.RecordBatch, r, i int) Row {
	row := Row{File: f.Path, Index: i, f: f, rec: rec, r: r}
	if f.id >= 0 {
		row.ID = strValue(rec.Column(f.id), r)
	} else {
		row.ID = fmt.Sprintf("%s#%d", filepath.Base(f.Path), i)
	}
	if f.cap >= 0 {
		row.Caption = strValue(rec.Column(f.cap), r)
	}
	return row
}

// strValue copies a string out of the file (Arrow's Value aliases the mapping, which Close unmaps).
func strValue(a arrow.Array, i int) string {
	switch s := a.(type) {
	case *array.String:
		return strings.Clone(s.Value(i))
	case *array.LargeString:
		return strings.Clone(s.Value(i))
	}
	return ""
}

// TensorRef is a stored tensor of a row: shape, dtype and its bytes, which alias the file
// (memory-mapped for Arrow IPC): nothing is copied until Decode.
type TensorRef struct {
	Name  string
	Shape []int
	DType kernels.DType
	Bytes []byte
}

// Numel is the number of elements.
func (t TensorRef) Numel() int { return kernels.Numel(t.Shape) }

// Decode converts the tensor to fp32 into dst (len Numel), optionally normalized per channel of
// dim 0 (see DecodeInto).
func (t TensorRef) Decode(dst []float32, mean, std []float64) {
	DecodeInto(dst, t.Bytes, t.DType, mean, std)
}

// Has reports whether the row's file has tensor x.
func (r Row) Has(x string) bool { _, ok := r.f.cols[x]; return ok }

// Tensor returns tensor x of the row, checked: the columns exist, the dtype is known, the shape is
// non-negative and its byte length matches. Errors name the file, the row and the column.
func (r Row) Tensor(x string) (t TensorRef, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("data: %s: row %d (%s), column %s: corrupt: %v", r.File, r.Index, r.ID, BytesCol(x), p)
		}
	}()
	c, ok := r.f.cols[x]
	if !ok {
		return t, fmt.Errorf("data: %s: row %d (%s): missing column %s", r.File, r.Index, r.ID, BytesCol(x))
	}
	where := func(col string) string {
		return fmt.Sprintf("data: %s: row %d (%s), column %s", r.File, r.Index, r.ID, col)
	}
	t.Name = x
	dcol := r.rec.Column(c.dtype)
	if dcol.IsNull(r.r) {
		return t, fmt.Errorf("%s: null", where(DTypeCol(x)))
	}
	if t.DType, err = ParseDType(strValue(dcol, r.r)); err != nil {
		return t, fmt.Errorf("%s: %w", where(DTypeCol(x)), err)
	}
	scol := r.rec.Column(c.shape).(*array.List)
	if scol.IsNull(r.r) {
		return t, fmt.Errorf("%s: null", where(ShapeCol(x)))
	}
	lo, hi := scol.ValueOffsets(r.r)
	switch v := scol.ListValues().(type) {
	case *array.Int64:
		for k := lo; k < hi; k++ {
			t.Shape = append(t.Shape, int(v.Value(int(k))))
		}
	case *array.Int32:
		for k := lo; k < hi; k++ {
			t.Shape = append(t.Shape, int(v.Value(int(k))))
		}
	}
	n := 1
	for _, s := range t.Shape {
		if s < 0 || (s > 0 && n > (1<<50)/s) {
			return t, fmt.Errorf("%s: bad shape %v", where(ShapeCol(x)), t.Shape)
		}
		n *= s
	}
	bcol := r.rec.Column(c.bytes)
	if bcol.IsNull(r.r) {
		return t, fmt.Errorf("%s: null", where(BytesCol(x)))
	}
	switch b := bcol.(type) {
	case *array.Binary:
		t.Bytes = b.Value(r.r)
	case *array.LargeBinary:
		t.Bytes = b.Value(r.r)
	}
	if len(t.Bytes) != n*t.DType.Size() {
		return t, fmt.Errorf("%s: %d bytes, but shape %v of %s needs %d", where(BytesCol(x)), len(t.Bytes), t.Shape, t.DType, n*t.DType.Size())
	}
	return t, nil
}

// Dataset is a file or a folder of files, rows numbered across files in path order.
type Dataset struct {
	Path   string
	Files  []*File
	starts []int
}

// IsDataFile reports whether a name has a dataset extension.
func IsDataFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".arrow", ".arrows", ".ipc", ".feather", ".parquet":
		return true
	}
	return false
}

// DataFiles lists the dataset files of a path: the file itself, or a folder's files (recursively,
// sorted by path).
func DataFiles(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	var out []string
	err = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && IsDataFile(p) && !strings.HasPrefix(d.Name(), ".") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("data: %s: no .arrow or .parquet files", path)
	}
	sort.Strings(out)
	return out, nil
}

// Open opens a dataset file or folder.
func Open(path string) (*Dataset, error) {
	files, err := DataFiles(path)
	if err != nil {
		return nil, err
	}
	d := &Dataset{Path: path, starts: []int{0}}
	for _, p := range files {
		f, err := OpenFile(p)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.Files = append(d.Files, f)
		d.starts = append(d.starts, d.starts[len(d.starts)-1]+f.NumRows())
	}
	return d, nil
}

// NumRows is the number of rows over all files.
func (d *Dataset) NumRows() int { return d.starts[len(d.starts)-1] }

// Row returns row i of the dataset.
func (d *Dataset) Row(i int) (Row, error) {
	if i < 0 || i >= d.NumRows() {
		return Row{}, fmt.Errorf("data: %s: row %d out of range (%d rows)", d.Path, i, d.NumRows())
	}
	k := sort.SearchInts(d.starts, i+1) - 1
	return d.Files[k].Row(i - d.starts[k])
}

// CopiedBytes is the bytes the reader allocated (copied out of the files) so far.
func (d *Dataset) CopiedBytes() int64 {
	var n int64
	for _, f := range d.Files {
		n += f.Alloc.Bytes()
	}
	return n
}

// Close closes every file.
func (d *Dataset) Close() error {
	var errs []error
	for _, f := range d.Files {
		errs = append(errs, f.Close())
	}
	d.Files = nil
	return errors.Join(errs...)
}
