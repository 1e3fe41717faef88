package models

// Activation recomputation (gradient checkpointing) per block, selected by Shape.Recompute.
//
// A training pass keeps every block's activations for Backward: about 20 [B,N,D] and 2 [B,N,ffn]
// fp32 tensors a block (0.9 GB a block for Wan-1.3B at 4,680 tokens, 27 GB for 30 blocks). A
// recompute pass keeps per block only its output x3 (the next block's input; Hidden(l)) and, for a
// causal pass (ChunkFrames > 0), its RoPE'd K and V (Commit copies them into the cache); every other
// activation lives in one set of buffers shared by all blocks. Forward is unchanged (each block
// overwrites the shared buffers); Backward, before the backward of block l < Layers−1, runs block l's
// forward again from its saved input, so the shared buffers hold block l's activations (the last
// block's are still there from Forward). The arithmetic is the same op sequence on the same inputs:
// gradients equal those of a plain pass bit for bit on a deterministic device.
//
// After ForwardChunk, the layers also share one buffer of gathered keys and values (cache + chunk,
// fp32): the replay of layer l gathers its keys again from the cache, which must be unchanged since
// the forward (cache.go, regather), instead of keeping Layers gathers of up to the whole video each.
//
// Cost: one more forward of Layers−1 blocks per Backward (≈ +1/3 of a forward+backward's FLOPs).

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
)

// recomputeBlock appends block l > 0 of a recompute pass: block 0's activation buffers, with x
// (the previous block's output) as input and its own output; returns that output.
func (p *Pass) recomputeBlock(x *kernels.Tensor, B, N, D, H, Hd int) *kernels.Tensor {
	p.recompute = true
	a := p.blocks[0]
	a.x = x
	a.x3 = p.alloc(B, N, D)
	if p.S.ChunkFrames > 0 {
		p.ownKV = true
		a.v, a.kr = p.alloc(B*N, D), p.alloc(B*N, D)
		a.v4, a.kr4 = a.v.Reshape(B, N, H, Hd), a.kr.Reshape(B, N, H, Hd)
		a.qkv = []*kernels.Tensor{a.q, a.k, a.v} // not at one stride: three GEMMs (kernels.LinearBatched falls back)
	}
	p.blocks = append(p.blocks, a)
	return a.x3
}

// checkChunkKV panics when ForwardChunk runs on a recompute pass whose blocks share K/V (a
// bidirectional Shape): Commit would cache the last block's K/V for every layer. A pass whose K/V
// were shared on purpose (ShareChunkKV) refuses Commit instead.
func (p *Pass) checkChunkKV() {
	if p.recompute && !p.ownKV && !p.chunk.sharedKV {
		panic(fmt.Sprintf("models: ForwardChunk on a recompute pass of shape %+v: give the Shape ChunkFrames > 0 so that every block keeps its K/V", p.S))
	}
}

// replayCache is the cache a recompute Backward replays a block against: the pass's cache when its
// last forward was a ForwardChunk (its cached frames are gathered again), else nil.
func (s *chunkState) replayCache() *Cache {
	if s.active {
		return s.cache
	}
	return nil
}
