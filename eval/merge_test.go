package eval

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/sampler"
)

// Two runs of the same evaluation, one per training seed, merged through their JSON files: the same
// rows, in the same order, measuring the same as one run of both students; and a run of another
// teacher is refused.
func TestMergeTables(t *testing.T) {
	const textDim, textLen = 8, 6
	s := synthSet(t, 8, 4, 16, textDim, textLen)
	teacher, a, b := tinyDiT(1, textDim, textLen), tinyDiT(2, textDim, textLen), tinyDiT(3, textDim, textLen)
	spec := TableSpec{
		Steps: []int{1, 2}, TeacherCFG: 3, TeacherShift: 2,
		Student: sampler.Options{Method: sampler.Stream, ChunkFrames: 2},
		Count:   4, Batch: 3, Seeds: []int64{4, 5}, LongFrames: 8, FDBlocks: true,
	}
	run := func(teacher *models.DiT, students ...Labeled) *Table {
		t.Helper()
		sp := spec
		sp.Students = students
		tab, err := DistillTable(teacher, nil, s, sp)
		if err != nil {
			t.Fatal(err)
		}
		return tab
	}
	dir := t.TempDir()
	roundTrip := func(name string, tab *Table) *Table {
		t.Helper()
		js, err := tab.JSON()
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+".json")
		if err := os.WriteFile(p, js, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := ReadTable(p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// two jobs (p, q) at two training seeds, seed 0 in one run, seed 1 in another
	joint := run(teacher, Labeled{"p0", a}, Labeled{"p1", b}, Labeled{"q0", b}, Labeled{"q1", a})
	ta := roundTrip("a", run(teacher, Labeled{"p0", a}, Labeled{"q0", b}))
	tb := roundTrip("b", run(teacher, Labeled{"p1", b}, Labeled{"q1", a}))
	m, err := MergeTables(ta, tb)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + m.Text())
	if len(m.Rows) != len(joint.Rows) {
		t.Fatalf("%d merged rows, %d in the joint run:\n%s\n%s", len(m.Rows), len(joint.Rows), m.Text(), joint.Text())
	}
	for i := range m.Rows {
		if keyOf(m.Rows[i]) != keyOf(joint.Rows[i]) || !sameMeasure(m.Rows[i], joint.Rows[i]) {
			t.Fatalf("row %d: merged %+v, joint %+v", i, m.Rows[i], joint.Rows[i])
		}
	}
	if long := m.Rows[len(m.Rows)-1]; long.Frames != 8 || long.Drift == nil || long.FD == long.FD {
		t.Fatalf("the long row lost its NaN FD or drift in JSON: %+v", long)
	}
	// the text differs from the joint run's only in wall times: compare it without them
	cut := func(s string) string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if f := strings.Fields(l); len(f) == 12 && f[0] != "model" {
				l = strings.Join(append(f[:9:9], f[11]), " ")
			}
			out = append(out, l)
		}
		return strings.Join(out, "\n")
	}
	if cut(m.Text()) != cut(joint.Text()) {
		t.Fatalf("merged text\n%s\njoint\n%s", m.Text(), joint.Text())
	}
	if _, err := MergeTables(ta, run(tinyDiT(4, textDim, textLen), Labeled{"p1", b})); err == nil || !strings.Contains(err.Error(), "teacher") {
		t.Fatalf("another teacher's rows merged: %v", err)
	}
	other := *tb
	other.Seeds = []int64{4}
	if _, err := MergeTables(ta, &other); err == nil {
		t.Fatal("tables of other evaluation seeds merged")
	}
}
