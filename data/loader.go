package data

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
)

// LoaderConfig says how a dataset is batched.
type LoaderConfig struct {
	BatchSize   int
	Seed        int64
	Rank, World int  // shard: this process takes every World-th sample of each epoch's order, from Rank
	NoShuffle   bool // keep file order (evaluation)
	CFGDropout  float64
	Prefetch    int       // batches prepared ahead in the background
	TextLen     int       // pad text embeddings to this many tokens
	TextDim     int       // 0 = whatever the data has (all rows must agree)
	LatentShape []int     // [C, F, H, W] the model expects; nil = the first row's (all rows must agree)
	Mean, Std   []float64 // per-channel normalization of the latents; nil = none
	Dev         kernels.Device
	LatentCol   string // default "vae_latent"
	TextCol     string // default "text_embedding"
	TextOnly    bool   // prompts only (data-free objectives): Batch.Latents is nil
	// Trajectories: the rows' trajectory_latents [S, C, F, H, W] and trajectory_timesteps [S] (ODE
	// pairs for odeinit) are read into Batch.TrajLatents / TrajTimesteps. NewLoader turns it on when
	// the first row has them; every row must then have the same S and timesteps.
	Trajectories bool
}

// FromJob makes the loader config of a job (rank/world for multi-process training).
func FromJob(j *config.Job, rank, world int) (LoaderConfig, error) {
	c := LoaderConfig{
		BatchSize: j.Data.BatchSize, Seed: j.Seed, Rank: rank, World: world,
		CFGDropout: j.Data.CFGDropout, Prefetch: j.Data.Prefetch, TextLen: j.Data.TextLen,
	}
	if j.Data.Path == "" {
		s := j.Data.Synth
		c.TextDim = s.TextDim
		c.LatentShape = []int{LatentChannels, s.Frames, s.Size / 4, s.Size / 4}
	}
	if j.Data.Normalize != "none" && j.Data.Normalize != "" {
		C := 16
		if c.LatentShape != nil {
			C = c.LatentShape[0]
		}
		if j.Data.Normalize == "custom" {
			C = len(j.Data.Mean)
		}
		m, s, err := j.Data.MeanStd(C)
		if err != nil {
			return c, err
		}
		c.Mean, c.Std = m, s
	}
	return c, nil
}

// Batch is one training batch. Its tensors are CPU buffers (F32 set; Dev = LoaderConfig.Dev),
// reused: a batch is valid until the next call to Next.
type Batch struct {
	Latents  *kernels.Tensor // [B, C, F, H, W] fp32, normalized; nil when TextOnly
	Text     *kernels.Tensor // [B, L, text_dim] fp32, zero-padded; the null embedding (zeros) where Dropped
	Captions []string        // "" where Dropped
	IDs      []string
	Rows     []int // dataset row of each sample
	// ODE pairs (LoaderConfig.Trajectories), nil otherwise: x at the levels of the denoising list,
	// in the model's (normalized) space as `fewstep data ode-pairs` stores them, and their timesteps.
	TrajLatents   *kernels.Tensor // [B, S, C, F, H, W] fp32
	TrajTimesteps []float32       // [S] t = 1000·σ, descending
	Dropped       []bool          // CFG dropout: this sample's text is the null embedding
	Epoch         int
	Index         int // batch index within the epoch
}

// Cursor is the loader's position: the next batch it hands out is batch Batch of epoch Epoch.
// The other fields identify the stream; Restore refuses a cursor from another one.
type Cursor struct {
	Epoch int   `json:"epoch"`
	Batch int   `json:"batch"`
	Seed  int64 `json:"seed"`
	Rank  int   `json:"rank"`
	World int   `json:"world"`
	Rows  int   `json:"rows"`
	Size  int   `json:"batch_size"`
}

// Loader hands out batches in a deterministic order: epoch e is a permutation of the rows seeded by
// (seed, e), sharded by rank, cut into batches (the last partial batch is dropped). CFG dropout of
// a sample is decided by (seed, epoch, row), so a restored cursor reproduces every batch exactly.
type Loader struct {
	ds                *Dataset
	cfg               LoaderConfig
	perRank, perEpoch int // samples per rank and batches per epoch
	latN, textN       int
	trajN             int       // S·C·F·H·W of one sample's trajectory (Trajectories)
	trajTimes         []float32 // [S] the rows' trajectory timesteps

	pos   Cursor
	err   error // sticky: the prefetcher stopped on it
	cur   *Batch
	free  chan *Batch
	ready chan item
	quit  chan struct{}
	wg    sync.WaitGroup

	mu                  sync.Mutex
	batches             int64
	decodedBytes        int64 // bytes written into batch buffers
	storedBytes         int64 // stored (file) bytes of the latents and texts read
	copiedBeforeBatches int64
}

type item struct {
	b   *Batch
	err error
	at  Cursor // position after this batch
}

// NewLoader checks every row of the dataset against the config (so bad data fails before training
// starts) and starts the prefetcher at the beginning of epoch 0.
func NewLoader(ds *Dataset, cfg LoaderConfig) (*Loader, error) {
	if cfg.World <= 0 {
		cfg.World = 1
	}
	if cfg.LatentCol == "" {
		cfg.LatentCol = Latent
	}
	if cfg.TextCol == "" {
		cfg.TextCol = TextEmb
	}
	switch {
	case cfg.BatchSize <= 0:
		return nil, fmt.Errorf("data: loader: batch size %d", cfg.BatchSize)
	case cfg.Rank < 0 || cfg.Rank >= cfg.World:
		return nil, fmt.Errorf("data: loader: rank %d of world %d", cfg.Rank, cfg.World)
	case cfg.TextLen <= 0:
		return nil, fmt.Errorf("data: loader: text_len %d", cfg.TextLen)
	case cfg.Prefetch < 0:
		return nil, fmt.Errorf("data: loader: prefetch %d", cfg.Prefetch)
	}
	l := &Loader{ds: ds, cfg: cfg}
	if err := l.check(); err != nil {
		return nil, err
	}
	l.perRank = ds.NumRows() / cfg.World
	l.perEpoch = l.perRank / cfg.BatchSize
	if l.perEpoch == 0 {
		return nil, fmt.Errorf("data: %s: %d rows make no batch of %d on each of %d ranks", ds.Path, ds.NumRows(), cfg.BatchSize, cfg.World)
	}
	l.pos = Cursor{Seed: cfg.Seed, Rank: cfg.Rank, World: cfg.World, Rows: ds.NumRows(), Size: cfg.BatchSize}
	l.copiedBeforeBatches = ds.CopiedBytes()
	nbuf := cfg.Prefetch + 2
	l.free = make(chan *Batch, nbuf)
	for i := 0; i < nbuf; i++ {
		l.free <- l.newBatch()
	}
	l.start()
	return l, nil
}

// check validates every row: the columns, dtypes, byte lengths, and shapes against the config.
func (l *Loader) check() error {
	c := &l.cfg
	for i := 0; i < l.ds.NumRows(); i++ {
		row, err := l.ds.Row(i)
		if err != nil {
			return err
		}
		if !c.TextOnly {
			t, err := row.Tensor(c.LatentCol)
			if err != nil {
				return err
			}
			if c.LatentShape == nil {
				if len(t.Shape) != 4 {
					return fmt.Errorf("data: %s: row %d (%s), column %s: shape %v, want [C, F, H, W]", row.File, row.Index, row.ID, ShapeCol(c.LatentCol), t.Shape)
				}
				c.LatentShape = slices.Clone(t.Shape)
			}
			if !slices.Equal(t.Shape, c.LatentShape) {
				return fmt.Errorf("data: %s: row %d (%s), column %s: shape %v, the config wants %v", row.File, row.Index, row.ID, ShapeCol(c.LatentCol), t.Shape, c.LatentShape)
			}
			if c.Mean != nil && len(c.Mean) != t.Shape[0] {
				return fmt.Errorf("data: %s: row %d (%s), column %s: %d channels, data.mean/std have %d", row.File, row.Index, row.ID, ShapeCol(c.LatentCol), t.Shape[0], len(c.Mean))
			}
		}
		t, err := row.Tensor(c.TextCol)
		if err != nil {
			return err
		}
		if len(t.Shape) != 2 {
			return fmt.Errorf("data: %s: row %d (%s), column %s: shape %v, want [L, text_dim]", row.File, row.Index, row.ID, ShapeCol(c.TextCol), t.Shape)
		}
		if c.TextDim == 0 {
			c.TextDim = t.Shape[1]
		}
		if t.Shape[1] != c.TextDim {
			return fmt.Errorf("data: %s: row %d (%s), column %s: text_dim %d, the config wants %d", row.File, row.Index, row.ID, ShapeCol(c.TextCol), t.Shape[1], c.TextDim)
		}
		if t.Shape[0] > c.TextLen {
			return fmt.Errorf("data: %s: row %d (%s), column %s: %d tokens, more than data.text_len %d", row.File, row.Index, row.ID, ShapeCol(c.TextCol), t.Shape[0], c.TextLen)
		}
	}
	if !c.TextOnly {
		l.latN = kernels.Numel(c.LatentShape)
	}
	if !c.TextOnly && l.ds.NumRows() > 0 {
		if row, err := l.ds.Row(0); err == nil && row.Has(TrajLatent) {
			c.Trajectories = true
		}
	}
	if c.Trajectories {
		if err := l.checkTrajectories(); err != nil {
			return err
		}
	}
	l.textN = c.TextLen * c.TextDim
	return nil
}

// checkTrajectories validates every row's ODE pair: trajectory_latents [S, C, F, H, W] with the
// latents' [C, F, H, W] and trajectory_timesteps [S], the same S and timesteps in every row.
func (l *Loader) checkTrajectories() error {
	c := &l.cfg
	if c.TextOnly {
		return fmt.Errorf("data: %s: trajectories need latents (the loader is text-only)", l.ds.Path)
	}
	for i := 0; i < l.ds.NumRows(); i++ {
		row, err := l.ds.Row(i)
		if err != nil {
			return err
		}
		tl, err := row.Tensor(TrajLatent)
		if err != nil {
			return err
		}
		if len(tl.Shape) != 5 || !slices.Equal(tl.Shape[1:], c.LatentShape) {
			return fmt.Errorf("data: %s: row %d (%s), column %s: shape %v, want [S, %v...] (S levels of the latent shape)", row.File, row.Index, row.ID, ShapeCol(TrajLatent), tl.Shape, c.LatentShape)
		}
		tt, err := row.Tensor(TrajTimes)
		if err != nil {
			return err
		}
		if len(tt.Shape) != 1 || tt.Shape[0] != tl.Shape[0] {
			return fmt.Errorf("data: %s: row %d (%s), column %s: shape %v, want [%d] (one timestep per trajectory level)", row.File, row.Index, row.ID, ShapeCol(TrajTimes), tt.Shape, tl.Shape[0])
		}
		ts := make([]float32, tt.Numel())
		tt.Decode(ts, nil, nil)
		if l.trajTimes == nil {
			l.trajTimes = ts
		} else if !slices.Equal(ts, l.trajTimes) {
			return fmt.Errorf("data: %s: row %d (%s), column %s: timesteps %v, but earlier rows have %v", row.File, row.Index, row.ID, BytesCol(TrajTimes), ts, l.trajTimes)
		}
	}
	l.trajN = len(l.trajTimes) * l.latN
	return nil
}

func (l *Loader) newBatch() *Batch {
	B := l.cfg.BatchSize
	b := &Batch{Captions: make([]string, B), IDs: make([]string, B), Rows: make([]int, B), Dropped: make([]bool, B)}
	if l.cfg.Trajectories {
		b.TrajLatents = &kernels.Tensor{Dev: l.cfg.Dev, DType: kernels.F32, Shape: append([]int{B, len(l.trajTimes)}, l.cfg.LatentShape...), F32: make([]float32, B*l.trajN)}
		b.TrajTimesteps = l.trajTimes
	}
	if !l.cfg.TextOnly {
		b.Latents = &kernels.Tensor{Dev: l.cfg.Dev, DType: kernels.F32, Shape: append([]int{B}, l.cfg.LatentShape...), F32: make([]float32, B*l.latN)}
	}
	b.Text = &kernels.Tensor{Dev: l.cfg.Dev, DType: kernels.F32, Shape: []int{B, l.cfg.TextLen, l.cfg.TextDim}, F32: make([]float32, B*l.textN)}
	return b
}

// BatchesPerEpoch is the number of batches each rank gets per epoch.
func (l *Loader) BatchesPerEpoch() int { return l.perEpoch }

// LatentShape is [C, F, H, W] of every sample.
func (l *Loader) LatentShape() []int { return slices.Clone(l.cfg.LatentShape) }

// TextDim is the text embedding width.
func (l *Loader) TextDim() int { return l.cfg.TextDim }

// Order is the rows of epoch e for this rank, in order (perRank of them).
func (l *Loader) Order(epoch int) []int {
	n := l.ds.NumRows()
	perm := make([]int, n)
	for i := range perm {
		perm[i] = i
	}
	if !l.cfg.NoShuffle {
		rng := rand.New(rand.NewPCG(uint64(l.cfg.Seed), uint64(epoch)*0x9E3779B97F4A7C15^0xD1B54A32D192ED03))
		rng.Shuffle(n, func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
	}
	out := make([]int, l.perRank)
	for i := range out {
		out[i] = perm[i*l.cfg.World+l.cfg.Rank]
	}
	return out
}

// Drop decides CFG dropout of a row in an epoch: a pure function of (seed, epoch, row).
func (l *Loader) Drop(epoch, row int) bool {
	if l.cfg.CFGDropout <= 0 {
		return false
	}
	x := splitmix(uint64(l.cfg.Seed) ^ splitmix(uint64(epoch)<<32^uint64(row)^0x5eed))
	return float64(x>>11)/(1<<53) < l.cfg.CFGDropout
}

func splitmix(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// start runs the prefetcher from l.pos.
func (l *Loader) start() {
	l.quit = make(chan struct{})
	l.ready = make(chan item, max(l.cfg.Prefetch, 0))
	l.wg.Add(1)
	go func(at Cursor, quit chan struct{}, ready chan item) {
		defer l.wg.Done()
		var order []int
		orderEpoch := -1
		for {
			var b *Batch
			select {
			case b = <-l.free:
			case <-quit:
				return
			}
			if orderEpoch != at.Epoch {
				order, orderEpoch = l.Order(at.Epoch), at.Epoch
			}
			err := l.fill(b, order, at)
			at.Batch++
			if at.Batch == l.perEpoch {
				at.Epoch, at.Batch = at.Epoch+1, 0
			}
			select {
			case ready <- item{b, err, at}:
			case <-quit:
				l.free <- b
				return
			}
			if err != nil {
				return
			}
		}
	}(l.pos, l.quit, l.ready)
}

// stop ends the prefetcher and takes back its buffers.
func (l *Loader) stop() {
	close(l.quit)
	l.wg.Wait()
	for {
		select {
		case it := <-l.ready:
			l.free <- it.b
		default:
			return
		}
	}
}

// fill decodes batch `at` of its epoch into b: the one copy each latent makes.
func (l *Loader) fill(b *Batch, order []int, at Cursor) (err error) {
	defer func() { // the prefetcher's goroutine must not take the process down on bad bytes
		if r := recover(); r != nil {
			err = fmt.Errorf("data: %s: epoch %d batch %d: corrupt data: %v", l.ds.Path, at.Epoch, at.Batch, r)
		}
	}()
	B := l.cfg.BatchSize
	b.Epoch, b.Index = at.Epoch, at.Batch
	var stored, decoded int64
	for j := 0; j < B; j++ {
		ri := order[at.Batch*B+j]
		row, err := l.ds.Row(ri)
		if err != nil {
			return err
		}
		b.Rows[j], b.IDs[j] = ri, row.ID
		b.Dropped[j] = l.Drop(at.Epoch, ri)
		b.Captions[j] = row.Caption
		if !l.cfg.TextOnly {
			t, err := row.Tensor(l.cfg.LatentCol)
			if err != nil {
				return err
			}
			if !slices.Equal(t.Shape, l.cfg.LatentShape) {
				return fmt.Errorf("data: %s: row %d (%s), column %s: shape %v, the config wants %v", row.File, row.Index, row.ID, ShapeCol(l.cfg.LatentCol), t.Shape, l.cfg.LatentShape)
			}
			v := b.Latents.F32[j*l.latN : (j+1)*l.latN]
			t.Decode(v, l.cfg.Mean, l.cfg.Std)
			if err := checkFinite(row, l.cfg.LatentCol, t, v); err != nil {
				return err
			}
			stored += int64(len(t.Bytes))
			decoded += int64(4 * l.latN)
		}
		if l.cfg.Trajectories { // already in the model's space: no normalization
			t, err := row.Tensor(TrajLatent)
			if err != nil {
				return err
			}
			if t.Numel() != l.trajN {
				return fmt.Errorf("data: %s: row %d (%s), column %s: shape %v, the loader wants %v", row.File, row.Index, row.ID, ShapeCol(TrajLatent), t.Shape, b.TrajLatents.Shape[1:])
			}
			v := b.TrajLatents.F32[j*l.trajN : (j+1)*l.trajN]
			t.Decode(v, nil, nil)
			if err := checkFinite(row, TrajLatent, t, v); err != nil {
				return err
			}
			stored += int64(len(t.Bytes))
			decoded += int64(4 * l.trajN)
		}
		txt := b.Text.F32[j*l.textN : (j+1)*l.textN]
		clear(txt)
		if b.Dropped[j] {
			b.Captions[j] = ""
			continue
		}
		t, err := row.Tensor(l.cfg.TextCol)
		if err != nil {
			return err
		}
		if len(t.Shape) != 2 || t.Shape[1] != l.cfg.TextDim || t.Shape[0] > l.cfg.TextLen {
			return fmt.Errorf("data: %s: row %d (%s), column %s: shape %v, the config wants [≤%d, %d]", row.File, row.Index, row.ID, ShapeCol(l.cfg.TextCol), t.Shape, l.cfg.TextLen, l.cfg.TextDim)
		}
		t.Decode(txt[:t.Numel()], nil, nil)
		if err := checkFinite(row, l.cfg.TextCol, t, txt[:t.Numel()]); err != nil {
			return err
		}
		stored += int64(len(t.Bytes))
		decoded += int64(4 * t.Numel())
	}
	l.mu.Lock()
	l.batches++
	l.storedBytes += stored
	l.decodedBytes += decoded
	l.mu.Unlock()
	return nil
}

// checkFinite is an error naming the file, row, column and element of the first NaN or Inf of a
// decoded tensor v (t's values), nil when all are finite. Training never sees a non-finite input.
func checkFinite(row Row, x string, t TensorRef, v []float32) error {
	for i, e := range v {
		if e-e != 0 { // NaN or ±Inf
			return fmt.Errorf("data: %s: row %d (%s), column %s: element %d of shape %v is %g: the data is not finite",
				row.File, row.Index, row.ID, BytesCol(x), i, t.Shape, e)
		}
	}
	return nil
}

// CheckFinite decodes every tensor of every row of the dataset (latents, text embeddings,
// trajectories: the columns the loader reads) and returns an error naming the file, row, column
// and element of the first NaN or Inf (`fewstep train --dry-run`, `fewstep data inspect`).
func CheckFinite(ds *Dataset) error {
	var buf []float32
	for i := 0; i < ds.NumRows(); i++ {
		row, err := ds.Row(i)
		if err != nil {
			return err
		}
		for _, x := range row.f.Tensors {
			t, err := row.Tensor(x)
			if err != nil {
				return err
			}
			if cap(buf) < t.Numel() {
				buf = make([]float32, t.Numel())
			}
			v := buf[:t.Numel()]
			t.Decode(v, nil, nil)
			if err := checkFinite(row, x, t, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// Next returns the next batch, valid until the following call to Next.
func (l *Loader) Next() (*Batch, error) {
	if l.cur != nil {
		l.free <- l.cur
		l.cur = nil
	}
	if l.err != nil {
		return nil, l.err
	}
	it := <-l.ready
	if it.err != nil {
		l.free <- it.b
		l.err = it.err
		return nil, it.err
	}
	l.cur, l.pos = it.b, it.at
	return it.b, nil
}

// Cursor is the position of the next batch Next returns (save it in a checkpoint).
func (l *Loader) Cursor() Cursor { return l.pos }

// Restore moves the loader to a saved cursor: the batches that follow are exactly those that
// followed when it was saved.
func (l *Loader) Restore(c Cursor) error {
	want := Cursor{Epoch: c.Epoch, Batch: c.Batch, Seed: l.cfg.Seed, Rank: l.cfg.Rank, World: l.cfg.World, Rows: l.ds.NumRows(), Size: l.cfg.BatchSize}
	if c != want {
		return fmt.Errorf("data: loader cursor %+v is from another stream (this loader: seed %d, rank %d/%d, %d rows, batch %d)",
			c, want.Seed, want.Rank, want.World, want.Rows, want.Size)
	}
	if l.quit == nil {
		return fmt.Errorf("data: %s: the loader is closed", l.ds.Path)
	}
	if c.Epoch < 0 || c.Batch < 0 || c.Batch >= l.perEpoch {
		return fmt.Errorf("data: loader cursor %+v out of range (%d batches per epoch)", c, l.perEpoch)
	}
	l.stop()
	if l.cur != nil {
		l.free <- l.cur
		l.cur = nil
	}
	l.pos, l.err = c, nil
	l.start()
	return nil
}

// Close stops the prefetcher; Next then returns an error.
func (l *Loader) Close() {
	if l.quit != nil {
		l.stop()
		l.quit = nil
		l.err = fmt.Errorf("data: %s: the loader is closed", l.ds.Path)
	}
}

// LoaderStats counts what the loader moved.
type LoaderStats struct {
	Batches      int64
	StoredBytes  int64 // bytes of the stored tensors read (aliasing the file for Arrow IPC)
	DecodedBytes int64 // fp32 bytes written into batch buffers: the one copy a sample makes
	ReaderBytes  int64 // bytes the reader copied out of the files into Go memory (all at open)
}

// Stats reports totals since the loader was made.
func (l *Loader) Stats() LoaderStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return LoaderStats{Batches: l.batches, StoredBytes: l.storedBytes, DecodedBytes: l.decodedBytes, ReaderBytes: l.ds.CopiedBytes()}
}
