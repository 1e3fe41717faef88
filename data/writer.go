package data

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/fewstep/fewstep/kernels"
)

// Tensor is one tensor of a row as stored: a shape, a dtype and its little-endian bytes.
type Tensor struct {
	Name  string
	Shape []int
	DType kernels.DType
	Bytes []byte
}

// F32Tensor encodes fp32 values as a stored tensor of dtype dt.
func F32Tensor(name string, shape []int, v []float32, dt kernels.DType) Tensor {
	return Tensor{Name: name, Shape: shape, DType: dt, Bytes: EncodeTensor(v, dt)}
}

// Writer writes rows in the dataset schema to an Arrow IPC file (*.arrow, uncompressed) or a
// Parquet file (*.parquet, by extension), atomically: a temp file renamed on Close.
type Writer struct {
	path, tmp string
	f         *os.File
	tensors   []string
	schema    *arrow.Schema
	b         *array.RecordBuilder
	ipcw      *ipc.FileWriter
	pqw       *pqarrow.FileWriter
	batchRows int
	pending   int
	rows      int
}

// NewWriter creates path with the given tensor columns; batchRows rows per record batch
// (Parquet: per row group). Rows must carry exactly these tensors, in this order.
func NewWriter(path string, tensors []string, batchRows int) (*Writer, error) {
	if batchRows <= 0 {
		batchRows = 256
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, err
	}
	w := &Writer{path: path, tmp: f.Name(), f: f, tensors: tensors, schema: Schema(tensors...), batchRows: batchRows}
	w.b = array.NewRecordBuilder(memory.DefaultAllocator, w.schema)
	if strings.HasSuffix(path, ".parquet") {
		props := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Uncompressed),
			parquet.WithStats(false), parquet.WithDictionaryDefault(false))
		w.pqw, err = pqarrow.NewFileWriter(w.schema, syncFile{f}, props, pqarrow.NewArrowWriterProperties())
	} else {
		w.ipcw, err = ipc.NewFileWriter(f, ipc.WithSchema(w.schema), ipc.WithAllocator(memory.DefaultAllocator))
	}
	if err != nil {
		f.Close()
		os.Remove(w.tmp)
		return nil, fmt.Errorf("data: create %s: %w", path, err)
	}
	return w, nil
}

// Append adds one row.
func (w *Writer) Append(id, caption string, ts ...Tensor) error {
	if len(ts) != len(w.tensors) {
		return fmt.Errorf("data: %s: row %q has %d tensors, the file has %d", w.path, id, len(ts), len(w.tensors))
	}
	w.b.Field(0).(*array.StringBuilder).Append(id)
	w.b.Field(1).(*array.StringBuilder).Append(caption)
	for i, t := range ts {
		if t.Name != w.tensors[i] {
			return fmt.Errorf("data: %s: row %q tensor %d is %q, want %q", w.path, id, i, t.Name, w.tensors[i])
		}
		if len(t.Bytes) != kernels.Numel(t.Shape)*t.DType.Size() {
			return fmt.Errorf("data: %s: row %q %s: %d bytes for shape %v %s", w.path, id, t.Name, len(t.Bytes), t.Shape, t.DType)
		}
		w.b.Field(2 + 3*i).(*array.BinaryBuilder).Append(t.Bytes)
		lb := w.b.Field(3 + 3*i).(*array.ListBuilder)
		lb.Append(true)
		vb := lb.ValueBuilder().(*array.Int64Builder)
		for _, s := range t.Shape {
			vb.Append(int64(s))
		}
		w.b.Field(4 + 3*i).(*array.StringBuilder).Append(t.DType.String())
	}
	w.pending++
	w.rows++
	if w.pending == w.batchRows {
		return w.flush()
	}
	return nil
}

func (w *Writer) flush() error {
	if w.pending == 0 {
		return nil
	}
	rec := w.b.NewRecordBatch()
	defer rec.Release()
	w.pending = 0
	var err error
	if w.pqw != nil {
		err = w.pqw.Write(rec)
	} else {
		err = w.ipcw.Write(rec)
	}
	if err != nil {
		return fmt.Errorf("data: write %s: %w", w.path, err)
	}
	return nil
}

// Rows is the number of rows appended.
func (w *Writer) Rows() int { return w.rows }

// Close flushes, fsyncs and renames the file into place.
func (w *Writer) Close() error {
	err := w.flush()
	if w.pqw != nil {
		err = errors.Join(err, w.pqw.Close()) // fsyncs and closes f (syncFile)
	} else {
		err = errors.Join(err, w.ipcw.Close(), w.f.Sync(), w.f.Close())
	}
	w.b.Release()
	if err == nil {
		err = os.Chmod(w.tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(w.tmp, w.path)
	}
	if err != nil {
		os.Remove(w.tmp)
		return fmt.Errorf("data: close %s: %w", w.path, err)
	}
	return nil
}

// Abort removes the temp file.
func (w *Writer) Abort() {
	if w.pqw != nil {
		w.pqw.Close()
	} else {
		w.ipcw.Close()
		w.f.Close()
	}
	w.b.Release()
	os.Remove(w.tmp)
}

// syncFile fsyncs before closing (the Parquet writer closes its sink itself).
type syncFile struct{ *os.File }

func (s syncFile) Close() error { return errors.Join(s.File.Sync(), s.File.Close()) }
