package models

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
)

// Cache is the KV cache of streaming (causal) generation: per layer, the self-attention K (after
// RMSNorm and RoPE at absolute frame positions) and V of the frames committed so far, in frame
// slots of h·w tokens. With a local window, it keeps at most localFrames frames: the first
// sinkFrames frames (never evicted) and the most recent localFrames − sinkFrames others (the oldest
// non-sink frame is overwritten first). Keys are position-encoded before caching and every cached
// key is visible to every query of the next chunk, so the slot order does not matter. K and V are
// stored in the cache's DType (NewCacheDType) and gathered into fp32 for attention.
type Cache struct {
	B, H, W, hw int // batch, latent height and width, tokens per frame
	local, sink int // window and sink, in frames (local 0 = unbounded)
	frames      int // absolute index of the next frame
	used        int // occupied slots (a prefix of the slots)
	capFrames   int // allocated slots
	D, layers   int
	K, V        []*kernels.Tensor // per layer [B, capFrames·hw·D]
	dev         kernels.Device
	gen         int           // bumped when K/V are reallocated
	epoch       int           // bumped by Reset and by a Commit that evicts: the cached frames changed
	DType       kernels.DType // storage of K and V
}

// CheckWindow validates a window and sink (in frames) for NewCache.
func CheckWindow(localFrames, sinkFrames int) error {
	if localFrames < 0 || sinkFrames < 0 {
		return fmt.Errorf("models: kv cache: local_attn_frames %d and sink_frames %d must be ≥ 0", localFrames, sinkFrames)
	}
	if localFrames > 0 && sinkFrames >= localFrames {
		return fmt.Errorf("models: kv cache: sink_frames %d must be < local_attn_frames %d (the window includes the sink)", sinkFrames, localFrames)
	}
	return nil
}

// NewCache makes an empty cache for batch B and latent size H×W. localFrames bounds the cached frames
// (sink included); 0 = unbounded, the cache grows as frames are committed. It panics on a window
// CheckWindow rejects.
func (m *DiT) NewCache(B, H, W, localFrames, sinkFrames int) *Cache {
	return m.NewCacheDType(kernels.F32, B, H, W, localFrames, sinkFrames)
}

// NewCacheDType is NewCache with K and V stored as dt. BF16 halves the cache; on a device whose
// attention reads bf16 copies of fp32 keys and values (the CUDA device with bf16 GEMMs) it changes
// nothing numerically, since the same values are rounded at Commit instead of at each attention.
func (m *DiT) NewCacheDType(dt kernels.DType, B, H, W, localFrames, sinkFrames int) *Cache {
	if err := CheckWindow(localFrames, sinkFrames); err != nil {
		panic(err)
	}
	if localFrames == 0 {
		sinkFrames = 0 // nothing is ever evicted
	}
	c := &Cache{B: B, H: H, W: W, hw: (H / 2) * (W / 2), local: localFrames, sink: sinkFrames,
		D: m.Cfg.Dim, layers: m.Cfg.Layers, dev: m.Dev, DType: dt}
	n := localFrames
	if n == 0 {
		n = 8
	}
	c.grow(n)
	return c
}

// Frames is the absolute frame index of the next chunk.
func (c *Cache) Frames() int { return c.frames }

// CachedFrames is the number of frames the next chunk attends to besides itself.
func (c *Cache) CachedFrames() int { return c.used }

// Reset empties the cache (memory is kept).
func (c *Cache) Reset() { c.frames, c.used = 0, 0; c.epoch++ }

// Reserve sizes an unbounded cache for frames frames: an empty one to exactly that many, an
// occupied one grown to that many if it holds fewer (a caller that knows its video's length
// allocates once, and no more than it needs). A windowed cache already holds its window.
func (c *Cache) Reserve(frames int) {
	if c.local == 0 && frames > 0 && (frames > c.capFrames || c.used == 0 && frames != c.capFrames) {
		c.grow(frames)
	}
}

// Bytes is the device memory the cache holds (0 after Free).
func (c *Cache) Bytes() int {
	if c.K == nil {
		return 0
	}
	return 2 * c.layers * c.B * c.capFrames * c.hw * c.D * c.DType.Size()
}

// Free releases the cache's device memory.
func (c *Cache) Free() {
	for l := range c.K {
		c.dev.Free(c.K[l])
		c.dev.Free(c.V[l])
	}
	c.K, c.V = nil, nil
}

func (c *Cache) grow(frames int) {
	K := make([]*kernels.Tensor, c.layers)
	V := make([]*kernels.Tensor, c.layers)
	T := c.hw * c.D
	if c.used == 0 { // nothing to keep: free first, so old and new are never held together
		c.Free()
	}
	for l := range K {
		K[l] = c.dev.Alloc(c.DType, c.B, frames*T)
		V[l] = c.dev.Alloc(c.DType, c.B, frames*T)
		if c.K != nil { // keep the occupied slots
			for b := 0; b < c.B; b++ {
				c.dev.Copy(K[l].View(b*frames*T, c.used*T), c.K[l].View(b*c.capFrames*T, c.used*T))
				c.dev.Copy(V[l].View(b*frames*T, c.used*T), c.V[l].View(b*c.capFrames*T, c.used*T))
			}
			c.dev.Free(c.K[l])
			c.dev.Free(c.V[l])
		}
	}
	c.K, c.V, c.capFrames = K, V, frames
	c.gen++
}

// slot is where absolute frame a lives.
func (c *Cache) slot(a int) int {
	if c.local == 0 || a < c.sink {
		return a
	}
	return c.sink + (a-c.sink)%(c.local-c.sink)
}

// chunkState is a pass's view of the cache during ForwardChunk, kept for Backward and Commit.
type chunkState struct {
	active     bool // the pass's last forward was a ForwardChunk
	committed  bool // and it has been committed
	sharedKV   bool // ShareChunkKV: the blocks share K/V, so only ForwardChunkCommit may commit
	commitNow  bool // this forward writes each layer's K/V into the cache (ForwardChunkCommit)
	cache      *Cache
	frame0     int               // absolute frame of the chunk's first frame
	nc         int               // cached tokens attended (per batch)
	epoch      int               // the cache's epoch at the forward (a replay re-reads the same frames)
	ct, qOff   int               // attention mask arguments
	capTok     int               // allocated key tokens per batch (cache + chunk)
	kBuf, vBuf []*kernels.Tensor // per layer [B·capTok·D], or one buffer shared by every layer
	dkBuf      *kernels.Tensor   // [B·capTok·D] gradient of the gathered keys
	dvBuf      *kernels.Tensor

	// views for the current (cache, gen, nc)
	key                 [3]any
	kAll, vAll          []*kernels.Tensor   // per layer [B, nc+N, H, hd]
	dkAll, dvAll        *kernels.Tensor     // [B, nc+N, H, hd]
	kSrc, vSrc          [][]*kernels.Tensor // [layer][b] cache rows [nc·D]
	kDstC, vDstC        [][]*kernels.Tensor // [layer][b] gathered rows [0, nc)
	kDstN, vDstN        [][]*kernels.Tensor // [layer][b] gathered rows [nc, nc+N)
	krB, vB             [][]*kernels.Tensor // [layer][b] the chunk's own k, v [N·D]
	dkN, dvN, dKrB, dVB []*kernels.Tensor   // [b] gradient rows of the chunk's keys; of dKr, dV
}

func (s *chunkState) free(d kernels.Device) {
	s.releaseBufs(d)
	*s = chunkState{}
}

// releaseBufs frees the gather buffers (shared by every layer in an inference or recompute pass).
func (s *chunkState) releaseBufs(d kernels.Device) {
	for l := range s.kBuf {
		if l == 0 || s.kBuf[l] != s.kBuf[0] {
			d.Free(s.kBuf[l])
			d.Free(s.vBuf[l])
		}
	}
	if s.dkBuf != nil {
		d.Free(s.dkBuf)
		d.Free(s.dvBuf)
	}
	s.kBuf, s.vBuf, s.dkBuf, s.dvBuf, s.kAll = nil, nil, nil, nil, nil
}

// ForwardChunk runs the model on the next chunk of a streamed video: x [B, C, k, H, W] holds the
// frames c.Frames()…+k−1 (RoPE at those absolute positions), t [B, k]. Self-attention sees the
// cached K/V plus the chunk itself (block-causally inside the chunk if p.S.ChunkFrames < k). The
// pass must come from NewPass or NewInferencePass(Shape{F: k, H, W of the cache, ...}). Commit(c, p)
// then caches the chunk's K/V (from a ShareChunkKV pass: ForwardChunkCommit instead); Backward(p)
// works, with no gradient into the cache. A recompute pass's Backward gathers the cached frames
// again, so it needs them unchanged since the forward: no Reset, no Commit that evicts (it panics).
func (m *DiT) ForwardChunk(p *Pass, c *Cache, x, t, ctx *kernels.Tensor) *kernels.Tensor {
	return m.forwardChunk(p, c, c.frames, c.used, false, x, t, ctx)
}

// ForwardChunkCommit is ForwardChunk followed by Commit, except that each layer's K/V go into the
// cache as soon as the layer has computed them (its gathers read only the frames cached before, so
// the result is the same), which is what lets a pass whose blocks share K/V (ShareChunkKV) commit.
// It needs a cache that evicts nothing for this chunk (unbounded, or a window not yet full).
func (m *DiT) ForwardChunkCommit(p *Pass, c *Cache, x, t, ctx *kernels.Tensor) *kernels.Tensor {
	if c.local > 0 && c.frames+p.S.F > c.local {
		panic(fmt.Sprintf("models: ForwardChunkCommit: %d frames cached in a window of %d: this chunk evicts frames its own layers still read (use ForwardChunk, then Commit)", c.frames, c.local))
	}
	if c.local == 0 && c.frames+p.S.F > c.capFrames {
		c.grow(max(2*c.capFrames, c.frames+p.S.F))
	}
	out := m.forwardChunk(p, c, c.frames, c.used, true, x, t, ctx)
	c.advance(p.S.F)
	p.chunk.committed = true
	return out
}

// ForwardChunkAt runs a chunk that starts at absolute frame frame0 ≤ c.Frames() against the cache's
// first frame0 frames only: what ForwardChunk computed when that chunk was the next one, bit for
// bit, as long as the cache has not been Reset since (e.g. a graded rollout step recomputed for its
// backward once later chunks are cached). It needs an unbounded cache (a window evicts those frames)
// unless frame0 == c.Frames(). Backward(p) works; Commit(c, p) only when frame0 == c.Frames().
func (m *DiT) ForwardChunkAt(p *Pass, c *Cache, frame0 int, x, t, ctx *kernels.Tensor) *kernels.Tensor {
	if frame0 == c.frames {
		return m.ForwardChunk(p, c, x, t, ctx)
	}
	if c.local != 0 || frame0 < 0 || frame0 > c.frames {
		panic(fmt.Sprintf("models: ForwardChunkAt frame %d: cache at frame %d (window %d frames): only an unbounded cache keeps the earlier frames", frame0, c.frames, c.local))
	}
	return m.forwardChunk(p, c, frame0, frame0, false, x, t, ctx)
}

// forwardChunk: the chunk at absolute frame frame0 attends to the cache's first used slots.
func (m *DiT) forwardChunk(p *Pass, c *Cache, frame0, used int, commit bool, x, t, ctx *kernels.Tensor) *kernels.Tensor {
	p.checkInputs(m, x, t, ctx)
	if p.S.B != c.B || p.S.H != c.H || p.S.W != c.W {
		panic(fmt.Sprintf("models: ForwardChunk: pass %+v, cache for B %d, H %d, W %d", p.S, c.B, c.H, c.W))
	}
	s := &p.chunk
	s.active, s.committed, s.cache, s.frame0, s.epoch, s.commitNow = true, false, c, frame0, c.epoch, commit
	s.nc = used * c.hw
	s.ct, s.qOff = 0, 0
	if cf := p.S.ChunkFrames; cf > 0 && cf < p.S.F {
		s.ct, s.qOff = cf*p.hw, s.nc
		if s.nc%s.ct != 0 {
			panic(fmt.Sprintf("models: ForwardChunk: %d cached frames are not a multiple of chunk_frames %d", used, cf))
		}
	}
	m.prepareChunk(p, c)
	return m.forward(p, x, t, ctx, c)
}

// prepareChunk sizes the gather buffers to the keys attended now (the cached tokens plus the
// chunk's) and makes the views for the cache's current fill. Every layer shares one K and one V
// buffer when the pass never reads a layer's gathered keys after the next layer ran: an inference
// pass, and a recompute pass, whose Backward gathers each layer's keys again when it replays the
// layer (chunkState.regather). A plain training pass keeps one per layer for its Backward.
func (m *DiT) prepareChunk(p *Pass, c *Cache) {
	s, d := &p.chunk, m.Dev
	B, N, D := p.S.B, p.N, p.D
	need := s.nc + N
	if need > s.capTok {
		s.releaseBufs(d)
		s.capTok = need
		for l := range p.blocks {
			if (p.inference || p.recompute) && l > 0 {
				s.kBuf, s.vBuf = append(s.kBuf, s.kBuf[0]), append(s.vBuf, s.vBuf[0])
				continue
			}
			s.kBuf = append(s.kBuf, d.Alloc(kernels.F32, B*need*D))
			s.vBuf = append(s.vBuf, d.Alloc(kernels.F32, B*need*D))
		}
		if !p.inference {
			s.dkBuf = d.Alloc(kernels.F32, B*need*D)
			s.dvBuf = d.Alloc(kernels.F32, B*need*D)
		}
		s.kAll = nil
	}
	s.views(p, c)
}

// views makes the gather views for (cache, its allocation, nc), unless they are current.
func (s *chunkState) views(p *Pass, c *Cache) {
	B, N, D, H, Hd := p.S.B, p.N, p.D, p.Heads, p.Hd
	key := [3]any{c, c.gen, s.nc}
	if s.key == key && s.kAll != nil {
		return
	}
	s.key = key
	nk := s.nc + N
	nl := len(p.blocks)
	s.kAll, s.vAll = make([]*kernels.Tensor, nl), make([]*kernels.Tensor, nl)
	s.kSrc, s.vSrc = make([][]*kernels.Tensor, nl), make([][]*kernels.Tensor, nl)
	s.kDstC, s.vDstC = make([][]*kernels.Tensor, nl), make([][]*kernels.Tensor, nl)
	s.kDstN, s.vDstN = make([][]*kernels.Tensor, nl), make([][]*kernels.Tensor, nl)
	s.krB, s.vB = make([][]*kernels.Tensor, nl), make([][]*kernels.Tensor, nl)
	T := c.capFrames * c.hw * D // one batch row of the cache
	for l := range p.blocks {
		s.kAll[l] = s.kBuf[l].View(0, B, nk, H, Hd)
		s.vAll[l] = s.vBuf[l].View(0, B, nk, H, Hd)
		for b := 0; b < B; b++ {
			s.kSrc[l] = append(s.kSrc[l], c.K[l].View(b*T, s.nc*D))
			s.vSrc[l] = append(s.vSrc[l], c.V[l].View(b*T, s.nc*D))
			s.kDstC[l] = append(s.kDstC[l], s.kBuf[l].View(b*nk*D, s.nc*D))
			s.vDstC[l] = append(s.vDstC[l], s.vBuf[l].View(b*nk*D, s.nc*D))
			s.kDstN[l] = append(s.kDstN[l], s.kBuf[l].View((b*nk+s.nc)*D, N*D))
			s.vDstN[l] = append(s.vDstN[l], s.vBuf[l].View((b*nk+s.nc)*D, N*D))
			s.krB[l] = append(s.krB[l], p.blocks[l].kr.View(b*N*D, N*D))
			s.vB[l] = append(s.vB[l], p.blocks[l].v.View(b*N*D, N*D))
		}
	}
	s.dkN, s.dvN, s.dKrB, s.dVB = nil, nil, nil, nil
	if p.inference {
		return
	}
	s.dkAll = s.dkBuf.View(0, B, nk, H, Hd)
	s.dvAll = s.dvBuf.View(0, B, nk, H, Hd)
	for b := 0; b < B; b++ {
		s.dkN = append(s.dkN, s.dkBuf.View((b*nk+s.nc)*D, N*D))
		s.dvN = append(s.dvN, s.dvBuf.View((b*nk+s.nc)*D, N*D))
		s.dKrB = append(s.dKrB, p.g.dKr.View(b*N*D, N*D))
		s.dVB = append(s.dVB, p.g.dV.View(b*N*D, N*D))
	}
}

// regather is gather again for the replay of layer l in a recompute pass's Backward (its gather
// buffer is shared by every layer): the same cached frames, which must not have changed since the
// forward, and the chunk's own K/V that the replay just recomputed.
func (s *chunkState) regather(d kernels.Device, p *Pass, l int, c *Cache) (k, v *kernels.Tensor) {
	if c.epoch != s.epoch {
		panic("models: Backward of a recompute pass after ForwardChunk: the cache was Reset or evicted frames since the forward, and the replay re-reads them")
	}
	s.views(p, c) // the cache may have been reallocated (grown) by a Commit since
	return s.gather(d, l, nil, c)
}

// gather assembles layer l's keys and values: the cached tokens, then the chunk's own.
func (s *chunkState) gather(d kernels.Device, l int, a *blockActs, c *Cache) (k, v *kernels.Tensor) {
	for b := range s.kDstN[l] {
		if s.nc > 0 {
			d.Copy(s.kDstC[l][b], s.kSrc[l][b]) // [nc·D]
			d.Copy(s.vDstC[l][b], s.vSrc[l][b]) // [nc·D]
		}
		d.Copy(s.kDstN[l][b], s.krB[l][b]) // [N·D]
		d.Copy(s.vDstN[l][b], s.vB[l][b])  // [N·D]
	}
	return s.kAll[l], s.vAll[l]
}

// attentionBack is self-attention's backward over the gathered keys; only the chunk's own key and
// value gradients are kept (none flows into the cache).
func (s *chunkState) attentionBack(d kernels.Device, l int, a *blockActs, g *passGrads) {
	d.Zero(s.dkAll)
	d.Zero(s.dvAll)
	d.AttentionBack(g.dQr4, s.dkAll, s.dvAll, g.dAtt4, a.att4, a.lse, a.qr4, s.kAll[l], s.vAll[l], s.ct, s.qOff)
	for b := range s.dkN {
		d.Axpy(s.dKrB[b], 1, s.dkN[b]) // [N·D]
		d.Axpy(s.dVB[b], 1, s.dvN[b])  // [N·D]
	}
}

// Commit appends the K/V of p's last ForwardChunk to c (evicting the oldest non-sink frames beyond
// the window) and advances c.Frames() by the chunk's frames.
func (m *DiT) Commit(c *Cache, p *Pass) {
	s := &p.chunk
	if !s.active || s.committed || s.cache != c || s.frame0 != c.frames {
		panic("models: Commit: the pass's last forward was not a ForwardChunk on this cache at its current frame")
	}
	if s.sharedKV {
		panic("models: Commit from a pass whose blocks share K/V (ShareChunkKV): use ForwardChunkCommit")
	}
	if c.local == 0 && c.frames+p.S.F > c.capFrames {
		c.grow(max(2*c.capFrames, c.frames+p.S.F))
	}
	for l := range p.blocks {
		m.commitLayer(c, p, l)
	}
	c.advance(p.S.F)
	s.committed = true // a second Commit of the same chunk is an error
}

// commitLayer copies layer l's K/V of p's chunk into the cache slots of frames c.frames….
func (m *DiT) commitLayer(c *Cache, p *Pass, l int) {
	F, hw, D := p.S.F, c.hw, c.D
	T := c.capFrames * hw * D
	a := &p.blocks[l]
	for f := 0; f < F; f++ {
		sl := c.slot(c.frames + f)
		for b := 0; b < c.B; b++ {
			src := (b*p.N + f*hw) * D
			dst := b*T + sl*hw*D
			m.Dev.Copy(c.K[l].View(dst, hw*D), a.kr.View(src, hw*D)) // [h·w·D] RoPE'd key
			m.Dev.Copy(c.V[l].View(dst, hw*D), a.v.View(src, hw*D))  // [h·w·D]
		}
	}
}

// advance moves the cache past F committed frames.
func (c *Cache) advance(F int) {
	if c.local > 0 && c.frames+F > c.local {
		c.epoch++ // frames were evicted
	}
	c.frames += F
	c.used = c.frames
	if c.local > 0 {
		c.used = min(c.frames, c.local)
	}
}

// ShareChunkKV makes the blocks of an inference or recompute pass share their K/V as they share
// their other activations, freeing Layers−1 blocks' K/V: what a pass needs that never Commits after
// ForwardChunk (ForwardChunk and Backward read only the current block's K/V; a recompute Backward
// recomputes them), or that commits with ForwardChunkCommit. Commit from it panics. A plain
// training pass keeps every block's activations for Backward: there it does nothing.
func (p *Pass) ShareChunkKV() {
	if !(p.inference || p.recompute) || p.chunk.sharedKV {
		return
	}
	b0 := &p.blocks[0]
	drop := map[*kernels.Tensor]bool{}
	for l := 1; l < len(p.blocks); l++ {
		a := &p.blocks[l]
		if a.kr != b0.kr {
			drop[a.kr], drop[a.v] = true, true
		}
		a.kr, a.kr4, a.v, a.v4, a.qkv = b0.kr, b0.kr4, b0.v, b0.v4, b0.qkv
	}
	keep := p.allocated[:0]
	for _, t := range p.allocated {
		if drop[t] {
			p.d.Free(t)
		} else {
			keep = append(keep, t)
		}
	}
	p.allocated = keep
	p.ownKV = false
	p.chunk.sharedKV = true
	p.chunk.kAll = nil // the gather views read the blocks' K/V: make them again
}
