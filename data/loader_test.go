package data

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"github.com/fewstep/fewstep/config"
)

func synthDataset(t testing.TB, count int) (*Dataset, SynthOptions) {
	t.Helper()
	o := SynthOptions{Count: count, Heldout: 0, Frames: 2, Size: 16, TextDim: 4, Seed: 9}
	p, err := WriteSynth(t.TempDir(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(p.Train)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, o
}

type snap struct {
	lat, txt []float32
	ids      []string
	dropped  []bool
	epoch    int
	index    int
}

func take(t *testing.T, l *Loader, n int) []snap {
	t.Helper()
	var out []snap
	for i := 0; i < n; i++ {
		b, err := l.Next()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, snap{slices.Clone(b.Latents.F32), slices.Clone(b.Text.F32), slices.Clone(b.IDs), slices.Clone(b.Dropped), b.Epoch, b.Index})
	}
	return out
}

func sameSnaps(t *testing.T, a, b []snap) {
	t.Helper()
	for i := range a {
		if !slices.Equal(a[i].lat, b[i].lat) || !slices.Equal(a[i].txt, b[i].txt) || !slices.Equal(a[i].ids, b[i].ids) ||
			!slices.Equal(a[i].dropped, b[i].dropped) || a[i].epoch != b[i].epoch || a[i].index != b[i].index {
			t.Fatalf("batch %d differs: %v/%d/%d vs %v/%d/%d", i, a[i].ids, a[i].epoch, a[i].index, b[i].ids, b[i].epoch, b[i].index)
		}
	}
}

// Each sample of a batch equals an independent rendering of the same video through the latent map,
// normalized in float64; its text is the toy encoder's padded embedding (or zeros where dropped).
func TestLoaderValues(t *testing.T) {
	d, o := synthDataset(t, 30)
	C := LatentChannels
	mean, std := make([]float64, C), make([]float64, C)
	for c := range mean {
		mean[c], std[c] = 0.1*float64(c%7)-0.3, 0.5+0.05*float64(c)
	}
	l, err := NewLoader(d, LoaderConfig{BatchSize: 4, Seed: 5, CFGDropout: 0.3, Prefetch: 2, TextLen: 8, Mean: mean, Std: std})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	h := o.Size / 4
	n := C * o.Frames * h * h
	drops := 0
	for k := 0; k < 20; k++ { // crosses epochs (7 batches per epoch)
		b, err := l.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(b.Latents.Shape, []int{4, C, o.Frames, h, h}) || !slices.Equal(b.Text.Shape, []int{4, 8, 4}) {
			t.Fatalf("shapes %v %v", b.Latents.Shape, b.Text.Shape)
		}
		for j := 0; j < 4; j++ {
			v := SynthVideo(o.Seed, "train", b.Rows[j], o.Frames, o.Size)
			if v.ID != b.IDs[j] {
				t.Fatalf("row %d is %s, batch says %s", b.Rows[j], v.ID, b.IDs[j])
			}
			lat := EncodeLatent(v.Pixels, o.Frames, h, h)
			for i := 0; i < n; i++ {
				c := i / (n / C)
				want := (float64(lat[i]) - mean[c]) / std[c]
				if got := float64(b.Latents.F32[j*n+i]); math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)) {
					t.Fatalf("sample %d elem %d: %v, want %v", j, i, got, want)
				}
			}
			wantTxt := EncodeText(v.Caption, 4, 8)
			if b.Dropped[j] {
				drops++
				wantTxt = EncodeText("", 4, 8)
				if b.Captions[j] != "" {
					t.Fatal("dropped sample keeps its caption")
				}
			} else if b.Captions[j] != v.Caption {
				t.Fatalf("caption %q, want %q", b.Captions[j], v.Caption)
			}
			if !slices.Equal(b.Text.F32[j*32:(j+1)*32], wantTxt) {
				t.Fatalf("sample %d text differs", j)
			}
			if b.Dropped[j] != l.Drop(b.Epoch, b.Rows[j]) {
				t.Fatal("Dropped disagrees with Drop")
			}
		}
	}
	if drops == 0 || drops > 50 { // 80 samples at p = 0.3: 24 expected
		t.Fatalf("%d of 80 dropped at cfg_dropout 0.3", drops)
	}
	// dropout rate over many (epoch, row) decisions
	hits := 0
	for e := 0; e < 100; e++ {
		for r := 0; r < 100; r++ {
			if l.Drop(e, r) {
				hits++
			}
		}
	}
	if p := float64(hits) / 1e4; math.Abs(p-0.3) > 0.02 {
		t.Fatalf("dropout rate %.3f, want 0.3", p)
	}
}

// Epochs are permutations; different epochs differ; ranks split each epoch disjointly.
func TestLoaderShuffleShard(t *testing.T) {
	d, _ := synthDataset(t, 23)
	const W = 3
	var ls []*Loader
	for r := 0; r < W; r++ {
		l, err := NewLoader(d, LoaderConfig{BatchSize: 2, Seed: 1, Rank: r, World: W, TextLen: 8})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ls = append(ls, l)
	}
	if ls[0].BatchesPerEpoch() != 3 { // 23/3 = 7 per rank, 3 batches of 2
		t.Fatalf("batches per epoch %d", ls[0].BatchesPerEpoch())
	}
	for e := 0; e < 3; e++ {
		var all []int
		for _, l := range ls {
			all = append(all, l.Order(e)...)
		}
		sort.Ints(all)
		all = slices.Compact(all)
		if len(all) != 21 {
			t.Fatalf("epoch %d: ranks share rows (%d distinct of 21)", e, len(all))
		}
	}
	if slices.Equal(ls[0].Order(0), ls[0].Order(1)) {
		t.Fatal("epochs 0 and 1 have the same order")
	}
	// the batches a rank hands out follow its order
	for _, l := range ls {
		o0, o1 := l.Order(0), l.Order(1)
		want := append(slices.Clone(o0[:6]), o1[:6]...)
		var got []int
		for k := 0; k < 6; k++ {
			b, err := l.Next()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, b.Rows...)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("rows %v, want %v", got, want)
		}
	}
	nl, _ := NewLoader(d, LoaderConfig{BatchSize: 2, Seed: 1, NoShuffle: true, TextLen: 8})
	defer nl.Close()
	if !slices.Equal(nl.Order(3)[:5], []int{0, 1, 2, 3, 4}) {
		t.Fatal("NoShuffle reorders")
	}
}

// N batches straight = k batches, save the cursor, restore it in a fresh loader, N−k batches:
// bit for bit, across an epoch boundary, with and without prefetch.
func TestLoaderResumeExact(t *testing.T) {
	d, _ := synthDataset(t, 21)
	for _, prefetch := range []int{0, 3} {
		cfg := LoaderConfig{BatchSize: 4, Seed: 77, CFGDropout: 0.5, Prefetch: prefetch, TextLen: 8}
		a, err := NewLoader(d, cfg)
		if err != nil {
			t.Fatal(err)
		}
		straight := take(t, a, 13)
		a.Close()

		b, _ := NewLoader(d, cfg)
		first := take(t, b, 7)
		cur := b.Cursor()
		b.Close()
		if cur.Epoch != 1 || cur.Batch != 2 { // 5 batches per epoch
			t.Fatalf("cursor %+v", cur)
		}
		c, _ := NewLoader(d, cfg)
		take(t, c, 2) // it has moved on; Restore must still land exactly
		if err := c.Restore(cur); err != nil {
			t.Fatal(err)
		}
		rest := take(t, c, 6)
		c.Close()
		sameSnaps(t, straight, append(first, rest...))

		if _, err := c.Next(); err == nil {
			t.Fatal("Next after Close: no error")
		}
		bad := cur
		bad.Seed++
		c2, _ := NewLoader(d, cfg)
		if err := c2.Restore(bad); err == nil {
			t.Fatal("cursor of another seed accepted")
		}
		c2.Close()
	}
}

func TestFromJob(t *testing.T) {
	j := config.Defaults()
	j.Data.Normalize = "custom"
	j.Data.Mean = make([]float64, 48)
	j.Data.Std = make([]float64, 48)
	for i := range j.Data.Std {
		j.Data.Std[i] = 1
	}
	c, err := FromJob(&j, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.LatentShape, []int{48, 8, 8, 8}) || c.TextDim != 32 || c.TextLen != 8 || len(c.Mean) != 48 {
		t.Fatalf("%+v", c)
	}
	j.Data.Normalize = "wan"
	if _, err := FromJob(&j, 0, 1); err == nil {
		t.Fatal("wan statistics (16 channels) accepted for 48-channel synthetic latents")
	}
}

// A text-only dataset (prompts with embeddings, no latents) serves data-free objectives.
func TestLoaderTextOnly(t *testing.T) {
	p := rewrite(t, []string{TextEmb}, func(i int, ts []Tensor) []Tensor { return ts[1:] })
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	l, err := NewLoader(d, LoaderConfig{BatchSize: 3, Seed: 2, TextLen: 6, TextOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b, err := l.Next()
	if err != nil {
		t.Fatal(err)
	}
	if b.Latents != nil || !slices.Equal(b.Text.Shape, []int{3, 6, 4}) {
		t.Fatalf("latents %v text %v", b.Latents, b.Text.Shape)
	}
	for j := 0; j < 3; j++ {
		if !slices.Equal(b.Text.F32[j*24:(j+1)*24], EncodeText(b.Captions[j], 4, 6)) {
			t.Fatalf("sample %d text", j)
		}
	}
}

// normalize: wan on 16-channel latents (a FastVideo-style file): (x − mean_c)/std_c with Wan's
// VAE statistics, checked in float64 against the values written.
func TestLoaderWanNormalize(t *testing.T) {
	rows := makeFVRows(rand.New(rand.NewPCG(rand.Uint64(), 12)), 6, "bfloat16")
	for i := range rows { // equal text lengths are not needed; keep them short
		rows[i].txtShape[0] = 1
		rows[i].tRaw = rows[i].tRaw[:4*8]
	}
	rec := fvRecord(rows)
	defer rec.Release()
	p := filepath.Join(t.TempDir(), "wan.parquet")
	writeParquetIndependent(t, p, rec)
	j := config.Defaults()
	j.Data.Path, j.Data.Normalize, j.Data.BatchSize, j.Data.CFGDropout = p, "wan", 2, 0
	cfg, err := FromJob(&j, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg.TextDim = 0 // whatever the data has (8)
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	l, err := NewLoader(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b, err := l.Next()
	if err != nil {
		t.Fatal(err)
	}
	n := 16 * 2 * 4 * 6
	for s := 0; s < 2; s++ {
		src := rows[b.Rows[s]].lat
		for i := 0; i < n; i++ {
			c := i / (n / 16)
			want := (float64(src[i]) - config.WanMean[c]) / config.WanStd[c]
			if got := float64(b.Latents.F32[s*n+i]); math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)) {
				t.Fatalf("sample %d elem %d (channel %d): %v, want %v", s, i, c, got, want)
			}
		}
	}
}
