package data

import (
	"slices"
	"strings"
	"testing"
)

// The loader serves every row exactly once per epoch, split over the ranks (world 1 to 4), in an
// order that depends on the seed and the epoch: checked on the batches Next hands out, not on
// Order alone. And the shuffle moves every row: the last row is not left at the end.
func TestLoaderEveryRowOncePerEpoch(t *testing.T) {
	const n, B, epochs = 24, 2, 3
	d, _ := synthDataset(t, n)
	orders := map[int64][][]int{} // seed → epoch → rank 0's rows
	for _, seed := range []int64{1, 2} {
		for world := 1; world <= 4; world++ {
			served := make([][]int, epochs) // epoch → every row served, all ranks
			for rank := 0; rank < world; rank++ {
				l, err := NewLoader(d, LoaderConfig{BatchSize: B, Seed: seed, Rank: rank, World: world, TextLen: 8})
				if err != nil {
					t.Fatal(err)
				}
				for k := 0; k < epochs*l.BatchesPerEpoch(); k++ {
					b, err := l.Next()
					if err != nil {
						t.Fatal(err)
					}
					served[b.Epoch] = append(served[b.Epoch], b.Rows...)
					if world == 1 {
						for len(orders[seed]) <= b.Epoch {
							orders[seed] = append(orders[seed], nil)
						}
						orders[seed][b.Epoch] = append(orders[seed][b.Epoch], b.Rows...)
					}
				}
				l.Close()
			}
			for e, rows := range served {
				s := slices.Clone(rows)
				slices.Sort(s)
				for i, r := range s {
					if r != i || len(s) != n {
						t.Fatalf("seed %d, world %d, epoch %d: rows served %v, want each of 0..%d once", seed, world, e, s, n-1)
					}
				}
			}
		}
	}
	if slices.Equal(orders[1][0], orders[1][1]) || slices.Equal(orders[1][0], orders[2][0]) {
		t.Fatalf("the order does not depend on the epoch and the seed: %v %v %v", orders[1][0], orders[1][1], orders[2][0])
	}
	// Over 40 epochs the last row ends an epoch about 40/24 times; a shuffle that leaves it in
	// place ends all 40 with it (P(≥ 10 of 40) for a fair shuffle is below 1e-6).
	l, err := NewLoader(d, LoaderConfig{BatchSize: B, Seed: 3, TextLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	last := 0
	for e := 0; e < 40; e++ {
		if o := l.Order(e); o[len(o)-1] == n-1 {
			last++
		}
	}
	if last >= 10 {
		t.Fatalf("row %d ends %d of 40 epochs: the shuffle does not move it", n-1, last)
	}
}

// NewLoader refuses a config it cannot serve, naming the setting (the mutation report's uncovered
// checks of loader.go).
func TestNewLoaderRefusesBadConfig(t *testing.T) {
	d, _ := synthDataset(t, 8)
	for _, c := range []struct {
		cfg  LoaderConfig
		want string
	}{
		{LoaderConfig{BatchSize: 0, TextLen: 8}, "batch size 0"},
		{LoaderConfig{BatchSize: 2, TextLen: 8, Rank: 2, World: 2}, "rank 2 of world 2"},
		{LoaderConfig{BatchSize: 2, TextLen: 8, Rank: -1, World: 2}, "rank -1 of world 2"},
		{LoaderConfig{BatchSize: 2, TextLen: 0}, "loader: text_len 0"}, // the config check, not a row that has more tokens
		{LoaderConfig{BatchSize: 2, TextLen: 8, Prefetch: -1}, "prefetch -1"},
		{LoaderConfig{BatchSize: 5, TextLen: 8, World: 2}, "make no batch"},
	} {
		l, err := NewLoader(d, c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			if l != nil {
				l.Close()
			}
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	// the edges that are allowed: rank World−1, prefetch 0, a batch of exactly the rows per rank
	l, err := NewLoader(d, LoaderConfig{BatchSize: 4, TextLen: 8, Rank: 1, World: 2, Prefetch: 0})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}
