package eval

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A table.json as Table.JSON writes one: a data row, a teacher row with FD blocks, a streamed
// student with a frame drift.
const fuzzTableJSON = `{"count": 4, "reference": 4, "seed": 0, "seeds": [0, 1], "distill_cfg": 3, "blocks": ["pixels", "colour"],
 "rows": [
  {"model": "data", "sampler": "real", "steps": 0, "frames": 4, "cond_acc": 1, "fd": 0.1, "fd_blocks": [0.05, 0.05], "n": 4, "seeds": 2},
  {"model": "teacher", "sampler": "euler", "steps": 2, "frames": 4, "cfg": 3, "nfe": 4, "cond_acc": 0.5, "fd": 0.6, "fd_std": null, "fps": null, "fd_blocks": [0.3, 0.2], "n": 4, "seeds": 2},
  {"model": "student", "sampler": "stream", "steps": 2, "frames": 8, "cfg": 1, "nfe": 2, "cond_acc": 0.7, "fd": 0.4, "n": 4, "seeds": 2,
   "frame_drift": {"ref": 4, "size": [0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3], "colour": [0, 0, 0, 0, 0, 0, 0, 0], "colour_acc": [1, 1, 1, 1, 1, 1, 1, 0.9]}}
 ]}`

// FuzzReadTable: any table.json gives a table or an error, never a panic; what it reads merges with
// itself into the same rows and renders as text and JSON (eval --merge's path).
func FuzzReadTable(f *testing.F) {
	f.Add([]byte(fuzzTableJSON))
	f.Add([]byte(strings.Replace(fuzzTableJSON, `"ref": 4`, `"ref": 0`, 1)))
	f.Add([]byte(strings.Replace(fuzzTableJSON, `[0.3, 0.2]`, `[0.3]`, 1)))
	f.Add([]byte(`{"rows": [{"frame_drift": {"ref": 1, "size": [1]}}]}`))
	f.Add([]byte(`null`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "table.json")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		tab, err := ReadTable(p)
		if err != nil {
			return
		}
		m, err := MergeTables(tab, tab)
		if err != nil {
			return // a row repeated within the table may measure differently from its twin
		}
		if len(m.Rows) != len(tab.Rows) {
			t.Fatalf("a table merged with itself has %d rows, want its %d", len(m.Rows), len(tab.Rows))
		}
		_ = m.Text()
		if _, err := m.JSON(); err != nil {
			t.Fatalf("JSON of a table read back: %v", err)
		}
	})
}

// ReadTable refuses what Text cannot lay out, naming the row and what is wrong (both made eval
// --merge panic or misalign the block table before).
func TestReadTableRefusesMalformed(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ old, new, want string }{
		{`"ref": 4`, `"ref": 0`, "row 2 (student stream 2 steps): frame drift against its first 0 of 8 frames"},
		{`"ref": 4`, `"ref": 9`, "frame drift against its first 9 of 8 frames"},
		{`"colour": [0, 0, 0, 0, 0, 0, 0, 0]`, `"colour": [0]`, "frame drift of 8 / 1 / 8 frames"},
		{`[0.3, 0.2]`, `[0.3]`, "row 1 (teacher euler 2 steps): 1 FD blocks, the table names 2"},
	} {
		p := filepath.Join(dir, "table.json")
		if err := os.WriteFile(p, []byte(strings.Replace(fuzzTableJSON, c.old, c.new, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadTable(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s → %s: %v, want an error with %q", c.old, c.new, err, c.want)
		}
	}
	p := filepath.Join(dir, "table.json")
	if err := os.WriteFile(p, []byte(fuzzTableJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	tab, err := ReadTable(p)
	if err != nil {
		t.Fatalf("the well-formed table: %v", err)
	}
	if len(tab.Rows) != 3 || tab.Rows[2].Drift == nil || tab.Rows[2].Drift.Ref != 4 {
		t.Fatalf("read %+v", tab)
	}
}
