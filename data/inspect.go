package data

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Report describes one dataset file (`fewstep data inspect`).
type Report struct {
	Path    string       `json:"path"`
	Format  string       `json:"format"` // arrow | parquet
	Rows    int          `json:"rows"`
	Columns []ColumnInfo `json:"columns"`
	Tensors []TensorInfo `json:"tensors"`
	RowStat []RowStat    `json:"row_stats,omitempty"`
}

// ColumnInfo is a column and its Arrow type.
type ColumnInfo struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// TensorInfo summarises one tensor column over all rows: its distinct shapes and dtypes (with counts).
type TensorInfo struct {
	Name   string         `json:"name"`
	Shapes map[string]int `json:"shapes"`
	DTypes map[string]int `json:"dtypes"`
}

// RowStat is one row's tensors with their statistics.
type RowStat struct {
	Row     int          `json:"row"`
	ID      string       `json:"id"`
	Tensors []TensorStat `json:"tensors"`
}

// TensorStat is one tensor of a row; statistics are computed in float64.
type TensorStat struct {
	Name  string  `json:"name"`
	Shape []int   `json:"shape"`
	DType string  `json:"dtype"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
	Sum   float64 `json:"sum"`
}

// Inspect reports on a file or on every file of a folder. With rows, every row's tensors are
// decoded and summarised. Every tensor of every row is checked (dtype, shape, byte length).
func Inspect(path string, rows bool) ([]Report, error) {
	files, err := DataFiles(path)
	if err != nil {
		return nil, err
	}
	var out []Report
	for _, p := range files {
		r, err := inspectFile(p, rows)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// scanRows is the record batch size of inspect and convert on Parquet files.
const scanRows = 64

func inspectFile(path string, rows bool) (Report, error) {
	rep := Report{Path: path, Format: "arrow"}
	info := map[string]*TensorInfo{}
	var buf []float32
	err := ScanFile(path, scanRows, func(f *File, rec arrow.RecordBatch, base int) error {
		if rep.Columns == nil {
			if f.Parquet {
				rep.Format = "parquet"
			}
			for _, fl := range f.Schema.Fields() {
				rep.Columns = append(rep.Columns, ColumnInfo{fl.Name, fl.Type.String()})
			}
			for _, x := range f.Tensors {
				info[x] = &TensorInfo{Name: x, Shapes: map[string]int{}, DTypes: map[string]int{}}
				rep.Tensors = append(rep.Tensors, TensorInfo{Name: x})
			}
		}
		for _, row := range f.Rows(rec, base) {
			rep.Rows++
			rs := RowStat{Row: row.Index, ID: row.ID}
			for _, x := range f.Tensors {
				t, err := row.Tensor(x)
				if err != nil {
					return err
				}
				info[x].Shapes[fmt.Sprint(t.Shape)]++
				info[x].DTypes[t.DType.String()]++
				if !rows {
					continue
				}
				if cap(buf) < t.Numel() {
					buf = make([]float32, t.Numel())
				}
				v := buf[:t.Numel()]
				t.Decode(v, nil, nil)
				st := TensorStat{Name: x, Shape: t.Shape, DType: t.DType.String(), Min: math.Inf(1), Max: math.Inf(-1)}
				for _, e := range v {
					d := float64(e)
					st.Sum += d
					st.Min = math.Min(st.Min, d)
					st.Max = math.Max(st.Max, d)
				}
				if len(v) > 0 {
					st.Mean = st.Sum / float64(len(v))
				} else {
					st.Min, st.Max = 0, 0
				}
				rs.Tensors = append(rs.Tensors, st)
			}
			if rows {
				rep.RowStat = append(rep.RowStat, rs)
			}
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	if rep.Columns == nil { // no record batch: the schema alone
		f, err := OpenFile(path)
		if err != nil {
			return rep, err
		}
		defer f.Close()
		if f.Parquet {
			rep.Format = "parquet"
		}
		for _, fl := range f.Schema.Fields() {
			rep.Columns = append(rep.Columns, ColumnInfo{fl.Name, fl.Type.String()})
		}
		for _, x := range f.Tensors {
			info[x] = &TensorInfo{Name: x, Shapes: map[string]int{}, DTypes: map[string]int{}}
			rep.Tensors = append(rep.Tensors, TensorInfo{Name: x})
		}
	}
	for i := range rep.Tensors {
		rep.Tensors[i] = *info[rep.Tensors[i].Name]
	}
	return rep, nil
}

// Text renders a report for a terminal.
func (r Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s): %d rows\n", r.Path, r.Format, r.Rows)
	for _, c := range r.Columns {
		fmt.Fprintf(&b, "  column %-28s %s\n", c.Name, c.Type)
	}
	for _, t := range r.Tensors {
		fmt.Fprintf(&b, "  tensor %-28s shapes %s  dtypes %s\n", t.Name, counts(t.Shapes), counts(t.DTypes))
	}
	for _, rs := range r.RowStat {
		for _, t := range rs.Tensors {
			fmt.Fprintf(&b, "  row %d %s %s %v %s min %v max %v mean %v sum %v\n", rs.Row, rs.ID, t.Name, t.Shape, t.DType, t.Min, t.Max, t.Mean, t.Sum)
		}
	}
	return b.String()
}

func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// Convert rewrites Parquet (or Arrow IPC) dataset files as Arrow IPC, uncompressed, so they take
// the zero-copy path: a file to a file (dst ending in .arrow) or a folder to a folder (same
// relative paths, extension .arrow). Every column is kept; every tensor of every row is checked
// first, and a failure leaves no partial output file.
func Convert(src, dst string) ([]string, error) {
	files, err := DataFiles(src)
	if err != nil {
		return nil, err
	}
	st, _ := os.Stat(src)
	var outs []string
	for _, p := range files {
		out := dst
		if st.IsDir() {
			rel, _ := filepath.Rel(src, p)
			out = filepath.Join(dst, strings.TrimSuffix(rel, filepath.Ext(rel))+".arrow")
		}
		// Never write over a source: the same path, or the same file through a link (the
		// temporary file's rename would replace the data being read).
		if ps, err := os.Stat(p); err == nil {
			if os2, err := os.Stat(out); err == nil && os.SameFile(ps, os2) {
				return outs, fmt.Errorf("data convert: %s would overwrite its source %s (the same file); give another destination", out, p)
			}
		}
		if err := convertFile(p, out); err != nil {
			return outs, err
		}
		outs = append(outs, out)
	}
	return outs, nil
}

func convertFile(src, dst string) (err error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return err
	}
	var w *ipc.FileWriter
	defer func() {
		if err != nil {
			if w != nil {
				w.Close()
			}
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var schema *arrow.Schema
	err = ScanFile(src, scanRows, func(f *File, rec arrow.RecordBatch, base int) error {
		for _, row := range f.Rows(rec, base) {
			for _, x := range f.Tensors {
				if _, err := row.Tensor(x); err != nil {
					return err
				}
			}
		}
		if w == nil {
			schema = f.Schema
			var err error
			if w, err = ipc.NewFileWriter(tmp, ipc.WithSchema(schema), ipc.WithAllocator(memory.DefaultAllocator)); err != nil {
				return fmt.Errorf("data: convert %s: %w", dst, err)
			}
		}
		if err := w.Write(rec); err != nil {
			return fmt.Errorf("data: convert %s: %w", dst, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if w == nil { // no rows: write the schema alone
		f, err := OpenFile(src)
		if err != nil {
			return err
		}
		schema = f.Schema
		f.Close()
		if w, err = ipc.NewFileWriter(tmp, ipc.WithSchema(schema), ipc.WithAllocator(memory.DefaultAllocator)); err != nil {
			return fmt.Errorf("data: convert %s: %w", dst, err)
		}
	}
	cerr := w.Close()
	w = nil
	if err = errors.Join(cerr, tmp.Sync(), tmp.Close(), os.Chmod(tmp.Name(), 0o644)); err != nil {
		return fmt.Errorf("data: convert %s: %w", dst, err)
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("data: convert %s: %w", dst, err)
	}
	return nil
}
