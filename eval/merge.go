package eval

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
)

// ReadTable reads a table written by Table.JSON (null FD, FD std and frames/s → NaN).
func ReadTable(path string) (*Table, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var t struct {
		Table
		Rows []struct {
			Row
			FD    *float64 `json:"fd"`
			FDStd *float64 `json:"fd_std"`
			FPS   *float64 `json:"fps"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	nan := func(p *float64) float64 {
		if p == nil {
			return math.NaN()
		}
		return *p
	}
	out := t.Table
	out.Rows = make([]Row, len(t.Rows))
	for i, r := range t.Rows {
		out.Rows[i] = r.Row
		out.Rows[i].FD, out.Rows[i].FDStd, out.Rows[i].FPS = nan(r.FD), nan(r.FDStd), nan(r.FPS)
		if err := checkRowShape(out.Rows[i], len(out.Blocks)); err != nil {
			return nil, fmt.Errorf("%s: row %d (%s %s %d steps): %w", path, i, r.Model, r.Sampler, r.Steps, err)
		}
	}
	return &out, nil
}

// checkRowShape refuses what Table.Text cannot lay out: FD blocks other than the table's, a frame
// drift whose reference frame is not among its frames or whose series differ in length.
func checkRowShape(r Row, blocks int) error {
	if len(r.FDBlocks) != 0 && len(r.FDBlocks) != blocks {
		return fmt.Errorf("%d FD blocks, the table names %d", len(r.FDBlocks), blocks)
	}
	if d := r.Drift; d != nil {
		F := len(d.Size)
		if len(d.Colour) != F || len(d.ColourAcc) != F {
			return fmt.Errorf("frame drift of %d / %d / %d frames (size, colour, colour accuracy)", F, len(d.Colour), len(d.ColourAcc))
		}
		if d.Ref < 1 || d.Ref > F {
			return fmt.Errorf("frame drift against its first %d of %d frames", d.Ref, F)
		}
	}
	return nil
}

// rowKey names a row within one table: DistillTable writes one row per model, sampler, k, length
// and guidance.
type rowKey struct {
	model, sampler string
	steps, frames  int
	cfg            float64
}

func keyOf(r Row) rowKey { return rowKey{r.Model, r.Sampler, r.Steps, r.Frames, r.CFG} }

// sameMeasure reports whether two rows of the same key measured the same videos: every metric and
// spread equal (NaN equal to NaN). Wall times (ms/video, frames/s) are not compared.
func sameMeasure(a, b Row) bool {
	eq := func(x, y float64) bool { return x == y || (math.IsNaN(x) && math.IsNaN(y)) }
	if a.N != b.N || a.Seeds != b.Seeds || a.NFE != b.NFE || len(a.FDBlocks) != len(b.FDBlocks) {
		return false
	}
	for _, p := range [][2]float64{{a.CondAcc, b.CondAcc}, {a.ColourAcc, b.ColourAcc}, {a.DirAcc, b.DirAcc},
		{a.FD, b.FD}, {a.SizeDrift, b.SizeDrift}, {a.ColourDrift, b.ColourDrift}, {a.Stability, b.Stability},
		{a.CondAccStd, b.CondAccStd}, {a.FDStd, b.FDStd}, {a.StabilityStd, b.StabilityStd}} {
		if !eq(p[0], p[1]) {
			return false
		}
	}
	for i := range a.FDBlocks {
		if !eq(a.FDBlocks[i], b.FDBlocks[i]) {
			return false
		}
	}
	return true
}

// MergeTables joins tables made by separate runs of the same evaluation (the same prompts, FD
// reference, evaluation seeds, distillation guidance and blocks), e.g. the students of training
// seed 0 evaluated in one run and those of seeds 1 and 2 in another. A row the tables share (the
// data row, the teacher rows) must have measured the same in each (the CPU evaluation is
// deterministic: it recomputes the same videos), else it is an error: the runs did not evaluate
// the same thing. Its first table's wall times are kept. Every other row is placed after the last
// merged row of its k and length with the same label but the trailing digits (sf20, sf21: one job
// at two training seeds), else after the last of its k and length: students labelled PREFIX<seed>
// come out in the order of one run of all of them (objective_tables.sh's --students, prefix by
// prefix, seed by seed).
func MergeTables(ts ...*Table) (*Table, error) {
	if len(ts) == 0 {
		return nil, fmt.Errorf("eval: merge: no tables")
	}
	m := *ts[0]
	m.Rows = slices.Clone(ts[0].Rows)
	for i, t := range ts[1:] {
		if t.Count != m.Count || t.Reference != m.Reference || t.Seed != m.Seed || !slices.Equal(t.Seeds, m.Seeds) ||
			t.DistillCFG != m.DistillCFG || !slices.Equal(t.Blocks, m.Blocks) {
			return nil, fmt.Errorf("eval: merge: table %d is another evaluation (%d prompts, %d reference videos, seeds %v, w = %g, blocks %v) than table 0's (%d, %d, %v, w = %g, %v)",
				i+1, t.Count, t.Reference, t.Seeds, t.DistillCFG, t.Blocks, m.Count, m.Reference, m.Seeds, m.DistillCFG, m.Blocks)
		}
		for _, r := range t.Rows {
			j := slices.IndexFunc(m.Rows, func(o Row) bool { return keyOf(o) == keyOf(r) })
			if j >= 0 {
				if !sameMeasure(m.Rows[j], r) {
					return nil, fmt.Errorf("eval: merge: row %s %s %d steps %d frames w = %g of table %d measured CondAcc %.4f FD %.4f, table 0's %.4f %.4f: not the same evaluation",
						r.Model, r.Sampler, r.Steps, r.Frames, r.CFG, i+1, r.CondAcc, r.FD, m.Rows[j].CondAcc, m.Rows[j].FD)
				}
				continue
			}
			at, same := -1, -1 // after the last row of its k and length; of its label prefix if any
			for k := len(m.Rows) - 1; k >= 0; k-- {
				o := m.Rows[k]
				if o.Steps != r.Steps || o.Frames != r.Frames || o.Model == "data" {
					continue
				}
				if at < 0 {
					at = k + 1
				}
				if strings.TrimRight(o.Model, "0123456789") == strings.TrimRight(r.Model, "0123456789") {
					same = k + 1
					break
				}
			}
			if same >= 0 {
				at = same
			} else if at < 0 {
				at = len(m.Rows)
			}
			m.Rows = slices.Insert(m.Rows, at, r)
		}
	}
	return &m, nil
}
