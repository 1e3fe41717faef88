package kernels

import (
	"math"
)

// Attention and 3D RoPE on the CPU.

// ropeSplit returns the pairs per axis (frame, row, col) for head_dim hd: (c − 2⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋).
func ropeSplit(hd int) (nf, nh, nw int) {
	c := hd / 2
	return c - 2*(c/3), c / 3, c / 3
}

// ropeTables fills c.ropeTab with cos/sin for frame positions frame0..frame0+frames-1, rows and
// cols: angles in float64, stored as float32 (as wan_ref.py's tables). Layout per axis: [pos][pairs]
// cos then sin.
func (c *cpuDevice) ropeTables(hd, frames, rows, cols, frame0 int) (fc, fs, hc, hs, wc, ws []float32) {
	nf, nh, nw := ropeSplit(hd)
	need := 2 * (frames*nf + rows*nh + cols*nw)
	if cap(c.ropeTab) < need {
		c.ropeTab = make([]float32, need)
	}
	tab := c.ropeTab[:need]
	axis := func(n, pairs, pos0 int) (cs, sn []float32) {
		cs, sn = tab[:n*pairs], tab[n*pairs:2*n*pairs]
		tab = tab[2*n*pairs:]
		for p := 0; p < n; p++ {
			for j := 0; j < pairs; j++ {
				a := float64(pos0+p) * math.Pow(10000, -float64(j)/float64(pairs))
				cs[p*pairs+j] = float32(math.Cos(a))
				sn[p*pairs+j] = float32(math.Sin(a))
			}
		}
		return
	}
	fc, fs = axis(frames, nf, frame0)
	hc, hs = axis(rows, nh, 0)
	wc, ws = axis(cols, nw, 0)
	return
}

func (c *cpuDevice) RoPE(x *Tensor, frames, rows, cols, frame0 int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rope("RoPE", x, frames, rows, cols, frame0, 1)
}

func (c *cpuDevice) RoPEBack(dx *Tensor, frames, rows, cols, frame0 int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rope("RoPEBack", dx, frames, rows, cols, frame0, -1)
}

// rope rotates the interleaved pairs (x[2j], x[2j+1]) of every head by +angle (dir 1) or −angle.
func (c *cpuDevice) rope(op string, x *Tensor, frames, rows, cols, frame0 int, dir float32) {
	if !(len(x.Shape) == 4) {
		panicf("%s: x %v is not [B,N,heads,hd]", op, x.Shape)
	}
	B, N, H, hd := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	if !(hd%2 == 0 && N == frames*rows*cols) {
		panicf("%s: x %v for grid %d×%d×%d", op, x.Shape, frames, rows, cols)
	}
	fc, fs, hc, hs, wc, ws := c.ropeTables(hd, frames, rows, cols, frame0)
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5], a.s[6] = f32(x), fc, fs, hc, hs, wc, ws
	a.i[0], a.i[1], a.i[2], a.i[3], a.i[4] = N, H, hd, rows, cols
	a.x[0] = dir
	c.pool.For(B*N, c.pool.grain(B*N, 3*H*hd), ropeTokens, a)
}

// ropeTokens rotates tokens [lo, hi) of x [B·N, H, hd].
func ropeTokens(a *opArgs, _, lo, hi int) {
	xx, fc, fs, hc, hs, wc, ws := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5], a.s[6]
	N, H, hd, rows, cols, dir := a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.x[0]
	nf, nh, nw := ropeSplit(hd)
	for t := lo; t < hi; t++ {
		n := t % N
		f, i, j := n/(rows*cols), (n/cols)%rows, n%cols
		for h := 0; h < H; h++ {
			v := xx[(t*H+h)*hd : (t*H+h+1)*hd]
			rot(v[:2*nf], fc[f*nf:(f+1)*nf], fs[f*nf:(f+1)*nf], dir)
			rot(v[2*nf:2*(nf+nh)], hc[i*nh:(i+1)*nh], hs[i*nh:(i+1)*nh], dir)
			rot(v[2*(nf+nh):2*(nf+nh+nw)], wc[j*nw:(j+1)*nw], ws[j*nw:(j+1)*nw], dir)
		}
	}
}

// rot: (a, b) → (a·cos − b·sin, a·sin + b·cos) with sin·dir.
func rot(v, cs, sn []float32, dir float32) {
	for p := range cs {
		a, b := v[2*p], v[2*p+1]
		co, si := cs[p], dir*sn[p]
		v[2*p] = a*co - b*si
		v[2*p+1] = a*si + b*co
	}
}

// attnDims reads q/out [B,Nq,H,hd], k/v [B,Nk,H,hd], lse [B,H,Nq].
func attnDims(op string, out, lse, q, k, v *Tensor) (B, Nq, Nk, H, hd int) {
	if !(len(q.Shape) == 4 && len(k.Shape) == 4) {
		panicf("%s: q %v k %v are not [B,N,H,hd]", op, q.Shape, k.Shape)
	}
	B, Nq, H, hd = q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	Nk = k.Shape[1]
	if !(k.Shape[0] == B && k.Shape[2] == H && k.Shape[3] == hd) {
		panicf("%s: q %v k %v", op, q.Shape, k.Shape)
	}
	if !(v.Numel() == k.Numel()) {
		panicf("%s: k %v v %v", op, k.Shape, v.Shape)
	}
	if !(out.Numel() == q.Numel()) {
		panicf("%s: q %v out %v", op, q.Shape, out.Shape)
	}
	if !(lse.Numel() == B*H*Nq) {
		panicf("%s: lse %v for [B=%d,H=%d,Nq=%d]", op, lse.Shape, B, H, Nq)
	}
	return
}

// visible is the number of keys (a prefix 0..jmax−1) query i sees.
func visible(i, Nk, chunkTokens, qOffset int) int {
	if chunkTokens == 0 {
		return Nk
	}
	return min(Nk, ((qOffset+i)/chunkTokens+1)*chunkTokens)
}

// attnQB is the number of query rows processed together (a GEMM row block).
const attnQB = 64

// Attention, blocked: each head's Kᵀ is packed once; then per (b, h, block of attnQB queries),
// S = Q·Kᵀ/√hd over the keys visible to the block's last query (a prefix), a stable softmax per row
// over its own visible prefix (P = exp(S − max), zero where masked), O = (P·V)/rowsum,
// lse = max + log rowsum (natural log). Scratch per worker: attnQB × Nk floats.
func (c *cpuDevice) Attention(out, lse, q, k, v *Tensor, chunkTokens, qOffset int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	B, Nq, Nk, H, hd := attnDims("Attention", out, lse, q, k, v)
	if !(chunkTokens >= 0 && qOffset >= 0) {
		panicf("Attention: chunkTokens %d qOffset %d", chunkTokens, qOffset)
	}
	nqb := (Nq + attnQB - 1) / attnQB
	c.scratch(attnQB*Nk + attnQB)
	c.gemmBufs()
	kp := c.packHeadsT(&c.kpack, B, H, Nk, hd, f32(k))
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5] = f32(out), f32(lse), f32(q), f32(k), f32(v), kp
	a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.i[5], a.i[6] = Nq, Nk, H, hd, nqb, chunkTokens, qOffset
	a.x[0] = float32(1 / math.Sqrt(float64(hd)))
	c.pool.For(B*H*nqb, 1, attnBlocks, a)
}

// attnBlocks runs the tasks [lo, hi) = (b, h, query block) of Attention.
func attnBlocks(a *opArgs, w, lo, hi int) {
	o, L, qq, kk, vv, kp := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5]
	Nq, Nk, H, hd, nqb, chunkTokens, qOffset := a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.i[5], a.i[6]
	scale := a.x[0]
	ld := H * hd
	kpLen := packedLen(hd, Nk)
	buf := a.c.gb[w]
	S, sums := a.c.scr[w][:attnQB*Nk], a.c.scr[w][attnQB*Nk:attnQB*Nk+attnQB]
	for task := lo; task < hi; task++ {
		bh, qb := task/nqb, task%nqb
		b, h := bh/H, bh%H
		i0 := qb * attnQB
		rows := min(attnQB, Nq-i0)
		jb := visible(i0+rows-1, Nk, chunkTokens, qOffset) // keys any row of the block sees
		qOff := (b*Nq+i0)*ld + h*hd
		kOff := b*Nk*ld + h*hd
		// S[rows, jb] = scale · Q_blk · Kᵀ
		clear(S[:rows*jb])
		if kp != nil {
			buf.gemmPackedB(rows, jb, hd, scale, mat{qq[qOff:], ld, 1}, kp[bh*kpLen:], S, jb)
		} else {
			buf.gemm(rows, jb, hd, scale, mat{qq[qOff:], ld, 1}, mat{kk[kOff:], 1, ld}, S, jb)
		}
		for i := 0; i < rows; i++ {
			si := S[i*jb : (i+1)*jb]
			jm := visible(i0+i, Nk, chunkTokens, qOffset)
			mx := maxf(si[:jm])
			sum := expShift(si[:jm], mx)
			clear(si[jm:])
			sums[i] = sum
			L[bh*Nq+i0+i] = mx + float32(math.Log(float64(sum)))
		}
		// O_blk = P · V, then each row / its sum.
		ob := o[qOff:]
		for i := 0; i < rows; i++ {
			clear(ob[i*ld : i*ld+hd])
		}
		buf.gemm(rows, hd, jb, 1, mat{S, jb, 1}, mat{vv[kOff:], ld, 1}, ob, ld)
		for i := 0; i < rows; i++ {
			var inv float32
			if sums[i] > 0 { // no visible key (Nk = 0): out stays 0
				inv = 1 / sums[i]
			}
			oi := ob[i*ld : i*ld+hd]
			for e := range oi {
				oi[e] *= inv
			}
		}
	}
}

// packHeadsT packs Xᵀ of every head (b, h) of x [B, Nk, H, hd] for gemmPackedB into the device
// buffer *dst (nil when hd is too deep for one packed block: the callers then use the plain GEMM).
func (c *cpuDevice) packHeadsT(dst *[]float32, B, H, Nk, hd int, kk []float32) []float32 {
	if hd > gemmKC {
		return nil
	}
	n := packedLen(hd, Nk)
	if cap(*dst) < B*H*n {
		*dst = make([]float32, B*H*n)
	}
	kp := (*dst)[:B*H*n]
	a := c.args()
	a.s[0], a.s[1], a.i[0], a.i[1], a.i[2] = kp, kk, H, Nk, hd
	c.pool.For(B*H, 1, packKTHeads, a)
	return kp
}

func packKTHeads(a *opArgs, _, lo, hi int) {
	kp, kk, H, Nk, hd := a.s[0], a.s[1], a.i[0], a.i[1], a.i[2]
	n, ld := packedLen(hd, Nk), H*hd
	for bh := lo; bh < hi; bh++ {
		b, h := bh/H, bh%H
		packB(kp[bh*n:(bh+1)*n], mat{kk[b*Nk*ld+h*hd:], 1, ld}, 0, hd, 0, Nk)
	}
}

// AttentionBack recomputes P = exp(S − lse) per block of queries and accumulates
// dV += Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O)), dQ += dS·K/√hd, dK += dSᵀ·Q/√hd, all as GEMMs
// (Kᵀ and Vᵀ of a head packed once). With many heads per worker the tasks are heads (b, h), each
// owning its rows of dQ, dK and dV. With few (B·H < 2·threads, e.g. the tiny preset on a laptop)
// the tasks are (b, h, query block) in one contiguous run per worker: each owns its rows of dQ, and
// dK, dV go to the run's partial sums, added up in run order at the end (so the result does not
// depend on which worker took which run).
func (c *cpuDevice) AttentionBack(dQ, dK, dV, dOut, out, lse, q, k, v *Tensor, chunkTokens, qOffset int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	B, Nq, Nk, H, hd := attnDims("AttentionBack", out, lse, q, k, v)
	sameNumel("AttentionBack", q, dOut, dQ)
	sameNumel("AttentionBack", k, dK, dV)
	pl := packedLen(hd, Nk)
	c.scratch(2*attnQB*Nk + 2*pl)
	c.gemmBufs()
	perHead := B*H >= 2*c.pool.threads || c.pool.threads == 1 || hd > gemmKC
	var kp, vp []float32
	var nk int // elements of a partial dK (= dV) per worker
	if !perHead {
		kp, vp = c.packHeadsT(&c.kpack, B, H, Nk, hd, f32(k)), c.packHeadsT(&c.vpack, B, H, Nk, hd, f32(v))
		nk = k.Numel()
		if len(c.dkv) < 2*c.pool.threads*nk {
			c.dkv = make([]float32, 2*c.pool.threads*nk)
		}
		clear(c.dkv[:2*c.pool.threads*nk])
	}
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3], a.s[4] = f32(dQ), f32(dK), f32(dV), f32(dOut), f32(out)
	a.s[5], a.s[6], a.s[7], a.s[8], a.s[9] = f32(lse), f32(q), f32(k), f32(v), nil
	a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.i[5] = Nq, Nk, H, hd, chunkTokens, qOffset
	a.x[0] = float32(1 / math.Sqrt(float64(hd)))
	if perHead {
		c.pool.For(B*H, 1, attnBackHeads, a)
		return
	}
	a.m[0], a.m[1] = mat{kp, 0, 0}, mat{vp, 0, 0}
	tasks := B * H * ((Nq + attnQB - 1) / attnQB)
	run := (tasks + c.pool.threads - 1) / c.pool.threads // ≤ threads runs: one partial each
	a.i[6], a.i[7] = nk, run
	c.pool.For(tasks, run, attnBackBlocks, a)
	// dK += Σ_r dK_r, dV += Σ_r dV_r
	r := c.args()
	r.s[0], r.s[1], r.s[2], r.i[0], r.i[1] = f32(dK), f32(dV), c.dkv, nk, c.pool.threads
	c.pool.For(nk, c.pool.grain(nk, 2*c.pool.threads), sumPartials, r)
}

// attnBackHeads: tasks [lo, hi) are heads (b, h); Kᵀ, Vᵀ packed per head into the worker's scratch.
func attnBackHeads(a *opArgs, w, lo, hi int) {
	Nk, H, hd, nqb := a.i[1], a.i[2], a.i[3], (a.i[0]+attnQB-1)/attnQB
	pl := packedLen(hd, Nk)
	scr := a.c.scr[w]
	kp, vp := scr[2*attnQB*Nk:][:pl], scr[2*attnQB*Nk+pl:][:pl]
	ld := H * hd
	for bh := lo; bh < hi; bh++ {
		b, h := bh/H, bh%H
		kOff := b*Nk*ld + h*hd
		if hd <= gemmKC {
			packB(kp, mat{a.s[7][kOff:], 1, ld}, 0, hd, 0, Nk)
			packB(vp, mat{a.s[8][kOff:], 1, ld}, 0, hd, 0, Nk)
		} else {
			kp, vp = nil, nil
		}
		for qb := 0; qb < nqb; qb++ {
			attnBackBlock(a, w, bh, qb*attnQB, kp, vp, a.s[1], a.s[2])
		}
	}
}

// attnBackBlocks: tasks [lo, hi) are (b, h, query block), run lo/a.i[7]; dK, dV into that run's
// partial sums (worker w's scratch for the rest).
func attnBackBlocks(a *opArgs, w, lo, hi int) {
	Nk, hd, nk := a.i[1], a.i[3], a.i[6]
	nqb := (a.i[0] + attnQB - 1) / attnQB
	pl := packedLen(hd, Nk)
	r := lo / a.i[7]
	var dk, dv []float32
	if a.s[1] != nil {
		dk = a.c.dkv[2*r*nk : (2*r+1)*nk]
	}
	if a.s[2] != nil {
		dv = a.c.dkv[(2*r+1)*nk : (2*r+2)*nk]
	}
	for task := lo; task < hi; task++ {
		bh, qb := task/nqb, task%nqb
		attnBackBlock(a, w, bh, qb*attnQB, a.m[0].d[bh*pl:(bh+1)*pl], a.m[1].d[bh*pl:(bh+1)*pl], dk, dv)
	}
}

// attnBackBlock does the backward of query rows i0.. of head bh = b·H + h: dQ rows += (owned),
// dk, dv (laid out like k, v; nil = not wanted) += this block's share. kp, vp: the head's packed
// Kᵀ and Vᵀ (nil: use the plain GEMM).
func attnBackBlock(a *opArgs, w, bh, i0 int, kp, vp, dk, dv []float32) {
	dq, g, o := a.s[0], a.s[3], a.s[4]
	L, qq, kk, vv := a.s[5], a.s[6], a.s[7], a.s[8]
	Nq, Nk, H, hd, chunkTokens, qOffset := a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.i[5]
	scale := a.x[0]
	ld := H * hd
	buf, scr := a.c.gb[w], a.c.scr[w]
	b, h := bh/H, bh%H
	kOff := b*Nk*ld + h*hd
	KT, VT := mat{kk[kOff:], 1, ld}, mat{vv[kOff:], 1, ld}
	rows := min(attnQB, Nq-i0)
	jb := visible(i0+rows-1, Nk, chunkTokens, qOffset)
	P, dP := scr[:rows*jb], scr[attnQB*Nk:attnQB*Nk+rows*jb]
	qOff := (b*Nq+i0)*ld + h*hd
	Qb, dOb := mat{qq[qOff:], ld, 1}, mat{g[qOff:], ld, 1}
	// P = exp(scale·Q·Kᵀ − lse), zero where masked.
	clear(P)
	if kp != nil {
		buf.gemmPackedB(rows, jb, hd, scale, Qb, kp, P, jb)
	} else {
		buf.gemm(rows, jb, hd, scale, Qb, KT, P, jb)
	}
	for i := 0; i < rows; i++ {
		pi := P[i*jb : (i+1)*jb]
		jm := visible(i0+i, Nk, chunkTokens, qOffset)
		expShift(pi[:jm], L[bh*Nq+i0+i])
		clear(pi[jm:])
	}
	if dv != nil { // dV[:jb] += Pᵀ · dO_blk
		buf.gemm(jb, hd, rows, 1, mat{P, 1, jb}, dOb, dv[kOff:], ld)
	}
	if dq == nil && dk == nil {
		return
	}
	// dP = dO_blk · Vᵀ; dS = P ⊙ (dP − D)·scale with D_i = dO_i · O_i.
	clear(dP)
	if vp != nil {
		buf.gemmPackedB(rows, jb, hd, 1, dOb, vp, dP, jb)
	} else {
		buf.gemm(rows, jb, hd, 1, dOb, VT, dP, jb)
	}
	for i := 0; i < rows; i++ {
		gi, oi := g[qOff+i*ld:][:hd], o[qOff+i*ld:][:hd]
		var D float32
		for e, x := range gi {
			D += x * oi[e]
		}
		pi, di := P[i*jb:(i+1)*jb], dP[i*jb:(i+1)*jb]
		for j, p := range pi {
			di[j] = p * (di[j] - D) * scale
		}
	}
	if dq != nil { // dQ_blk += dS · K
		buf.gemm(rows, hd, jb, 1, mat{dP, jb, 1}, mat{kk[kOff:], ld, 1}, dq[qOff:], ld)
	}
	if dk != nil { // dK[:jb] += dSᵀ · Q_blk
		buf.gemm(jb, hd, rows, 1, mat{dP, 1, jb}, Qb, dk[kOff:], ld)
	}
}

// sumPartials: dK[i] += Σ_r part[r].dK[i] and likewise dV, for i in [lo, hi), r in order.
func sumPartials(a *opArgs, _, lo, hi int) {
	dk, dv, part, nk, threads := a.s[0], a.s[1], a.s[2], a.i[0], a.i[1]
	for w := 0; w < threads; w++ {
		if dk != nil {
			src := part[2*w*nk:][lo:hi]
			dst := dk[lo:hi]
			for i, x := range src {
				dst[i] += x
			}
		}
		if dv != nil {
			src := part[(2*w+1)*nk:][lo:hi]
			dst := dv[lo:hi]
			for i, x := range src {
				dst[i] += x
			}
		}
	}
}

// scratch returns one float32 buffer of at least n elements per worker, grown on demand.
func (c *cpuDevice) scratch(n int) [][]float32 {
	if len(c.scr) != c.pool.threads {
		c.scr = make([][]float32, c.pool.threads)
	}
	for w := range c.scr {
		if cap(c.scr[w]) < n {
			c.scr[w] = make([]float32, n)
		}
	}
	return c.scr
}

// exp32 is e^x in float32 (relative error ≲ 2e-7): x = n·ln2 + r with |r| ≤ ln2/2, e^r by its
// degree-7 Taylor polynomial, 2^n through the exponent bits (n ≥ −126: flushed to 0 below −87.3).
func exp32(x float32) float32 {
	if x < -87.3 {
		return 0
	}
	if x > 88.7 {
		return float32(math.Inf(1))
	}
	const log2e, ln2hi, ln2lo = 1.44269504088896341, 0.693359375, -2.12194440e-4
	const round = 12582912 // 1.5·2²³: adding and subtracting it rounds to the nearest integer (no branch)
	fn := (x*log2e + round) - round
	n := int32(fn)
	r := x - fn*ln2hi - fn*ln2lo
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720+r*(1.0/5040)))))))
	return p * math.Float32frombits(uint32(n+127)<<23)
}

var negInf = math.Inf(-1)
