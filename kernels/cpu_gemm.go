package kernels

// A small packed GEMM for the CPU device (BLIS-style): C[m,n] += alpha·op(A)[m,k]·op(B)[k,n], with
// op(A)[i,p] = a[i·rsA + p·csA] and op(B)[p,j] = b[p·rsB + j·csB] (any transpose is a choice of
// strides) and C row-major with row stride ldc. Panels of A (6 rows) and B (16 columns) are packed
// into per-worker buffers and multiplied by a 6×16 micro-kernel: AVX2/FMA assembly on amd64 CPUs
// that have it, plain Go otherwise. It is serial; callers split the work across the pool.

const (
	gemmMR = 6   // rows of the micro-tile
	gemmNR = 16  // columns of the micro-tile
	gemmMC = 96  // rows of A packed at once (L2)
	gemmKC = 256 // depth packed at once
	gemmNC = 512 // columns of B packed at once
)

// gemmBuf is one worker's packing space.
type gemmBuf struct {
	a    []float32 // gemmMC × gemmKC
	b    []float32 // gemmKC × gemmNC
	tile [gemmMR * gemmNR]float32
}

func newGemmBuf() *gemmBuf {
	return &gemmBuf{a: make([]float32, gemmMC*gemmKC), b: make([]float32, gemmKC*gemmNC)}
}

// mat is a strided matrix operand.
type mat struct {
	d      []float32
	rs, cs int
}

// gemm computes C += alpha·A·B for A [m,k], B [k,n] (strided), C [m,n] row stride ldc.
func (buf *gemmBuf) gemm(m, n, k int, alpha float32, A, B mat, c []float32, ldc int) {
	if m == 0 || n == 0 || k == 0 {
		return
	}
	for jc := 0; jc < n; jc += gemmNC {
		nc := min(gemmNC, n-jc)
		for pc := 0; pc < k; pc += gemmKC {
			kc := min(gemmKC, k-pc)
			packB(buf.b, B, pc, kc, jc, nc)
			for ic := 0; ic < m; ic += gemmMC {
				mc := min(gemmMC, m-ic)
				packA(buf.a, A, ic, mc, pc, kc, alpha)
				buf.macro(mc, nc, kc, buf.a, buf.b, c[ic*ldc+jc:], ldc)
			}
		}
	}
}

// gemmPackedB is gemm with B already packed whole (packB(bp, B, 0, k, 0, n'), n ≤ n'); k ≤ gemmKC.
// Attention packs each head's Kᵀ (and Vᵀ) once and reuses it for every block of queries.
func (buf *gemmBuf) gemmPackedB(m, n, k int, alpha float32, A mat, bp []float32, c []float32, ldc int) {
	if m == 0 || n == 0 || k == 0 {
		return
	}
	for ic := 0; ic < m; ic += gemmMC {
		mc := min(gemmMC, m-ic)
		packA(buf.a, A, ic, mc, 0, k, alpha)
		buf.macro(mc, n, k, buf.a, bp, c[ic*ldc:], ldc)
	}
}

// packedLen is the length of packB's output for a [k, n] block.
func packedLen(k, n int) int { return (n + gemmNR - 1) / gemmNR * gemmNR * k }

// macro: C[mc, nc] += packed A [mc, kc] · packed B [kc, nc], micro-tile by micro-tile; partial
// tiles go through buf.tile.
func (buf *gemmBuf) macro(mc, nc, kc int, ap, bp []float32, c []float32, ldc int) {
	for jr := 0; jr < nc; jr += gemmNR {
		nr := min(gemmNR, nc-jr)
		bq := bp[(jr/gemmNR)*kc*gemmNR:]
		for ir := 0; ir < mc; ir += gemmMR {
			mr := min(gemmMR, mc-ir)
			aq := ap[(ir/gemmMR)*kc*gemmMR:]
			off := ir*ldc + jr
			if mr == gemmMR && nr == gemmNR {
				kernel6x16(kc, &aq[0], &bq[0], &c[off], ldc)
				continue
			}
			t := buf.tile[:]
			clear(t)
			kernel6x16(kc, &aq[0], &bq[0], &t[0], gemmNR)
			for i := 0; i < mr; i++ {
				cr := c[off+i*ldc : off+i*ldc+nr]
				for j := range cr {
					cr[j] += t[i*gemmNR+j]
				}
			}
		}
	}
}

// packA writes rows ic..ic+mc, depth pc..pc+kc of alpha·A as panels [mc/6][kc][6], zero-padded.
func packA(dst []float32, A mat, ic, mc, pc, kc int, alpha float32) {
	for ip := 0; ip < mc; ip += gemmMR {
		panel := dst[(ip/gemmMR)*kc*gemmMR : (ip/gemmMR+1)*kc*gemmMR]
		rows := min(gemmMR, mc-ip)
		if A.rs == 1 && rows == gemmMR { // Aᵀ stored row-major: 6 contiguous values per depth
			for p := 0; p < kc; p++ {
				src := A.d[(pc+p)*A.cs+ic+ip:][:gemmMR]
				q := panel[p*gemmMR : p*gemmMR+gemmMR]
				for r, v := range src {
					q[r] = alpha * v
				}
			}
			continue
		}
		if A.cs == 1 && rows == gemmMR {
			for r := 0; r < gemmMR; r++ {
				src := A.d[(ic+ip+r)*A.rs+pc:][:kc]
				for p, v := range src {
					panel[p*gemmMR+r] = alpha * v
				}
			}
			continue
		}
		for p := 0; p < kc; p++ {
			q := panel[p*gemmMR : p*gemmMR+gemmMR]
			for r := 0; r < gemmMR; r++ {
				if r < rows {
					q[r] = alpha * A.d[(ic+ip+r)*A.rs+(pc+p)*A.cs]
				} else {
					q[r] = 0
				}
			}
		}
	}
}

// packB writes depth pc..pc+kc, columns jc..jc+nc of B as panels [nc/16][kc][16], zero-padded.
func packB(dst []float32, B mat, pc, kc, jc, nc int) {
	for jp := 0; jp < nc; jp += gemmNR {
		panel := dst[(jp/gemmNR)*kc*gemmNR : (jp/gemmNR+1)*kc*gemmNR]
		cols := min(gemmNR, nc-jp)
		if B.cs == 1 && cols == gemmNR {
			for p := 0; p < kc; p++ {
				copy(panel[p*gemmNR:p*gemmNR+gemmNR], B.d[(pc+p)*B.rs+jc+jp:])
			}
			continue
		}
		if B.rs == 1 && cols == gemmNR {
			for j := 0; j < gemmNR; j++ {
				src := B.d[(jc+jp+j)*B.cs+pc:][:kc]
				for p, v := range src {
					panel[p*gemmNR+j] = v
				}
			}
			continue
		}
		for p := 0; p < kc; p++ {
			q := panel[p*gemmNR : p*gemmNR+gemmNR]
			for j := 0; j < gemmNR; j++ {
				if j < cols {
					q[j] = B.d[(pc+p)*B.rs+(jc+jp+j)*B.cs]
				} else {
					q[j] = 0
				}
			}
		}
	}
}

// kernelGo is the portable micro-kernel: C[6,16] (row stride ldc) += Σ_p a[p,:]ᵀ·b[p,:], as 8
// register-blocked passes of 3 rows × 4 columns (12 scalar accumulators) over the packed panels.
func kernelGo(k int, a, b, c []float32, ldc int) {
	a, b = a[:k*gemmMR], b[:k*gemmNR]
	for i0 := 0; i0 < gemmMR; i0 += 3 {
		for j0 := 0; j0 < gemmNR; j0 += 4 {
			var c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23 float32
			for ai, bi := i0, j0; ai < len(a); ai, bi = ai+gemmMR, bi+gemmNR {
				a0, a1, a2 := a[ai], a[ai+1], a[ai+2]
				b0, b1, b2, b3 := b[bi], b[bi+1], b[bi+2], b[bi+3]
				c00 += a0 * b0
				c01 += a0 * b1
				c02 += a0 * b2
				c03 += a0 * b3
				c10 += a1 * b0
				c11 += a1 * b1
				c12 += a1 * b2
				c13 += a1 * b3
				c20 += a2 * b0
				c21 += a2 * b1
				c22 += a2 * b2
				c23 += a2 * b3
			}
			r0 := c[i0*ldc+j0 : i0*ldc+j0+4 : i0*ldc+j0+4]
			r0[0] += c00
			r0[1] += c01
			r0[2] += c02
			r0[3] += c03
			r1 := c[(i0+1)*ldc+j0 : (i0+1)*ldc+j0+4 : (i0+1)*ldc+j0+4]
			r1[0] += c10
			r1[1] += c11
			r1[2] += c12
			r1[3] += c13
			r2 := c[(i0+2)*ldc+j0 : (i0+2)*ldc+j0+4 : (i0+2)*ldc+j0+4]
			r2[0] += c20
			r2[1] += c21
			r2[2] += c22
			r2[3] += c23
		}
	}
}

// gemmBufs returns one packing buffer per worker, made on first use.
func (c *cpuDevice) gemmBufs() []*gemmBuf {
	if c.gb == nil {
		c.gb = make([]*gemmBuf, c.pool.threads)
		for i := range c.gb {
			c.gb[i] = newGemmBuf()
		}
	}
	return c.gb
}

// pgemm is gemm split across the pool: by rows of C in multiples of gemmMR, or by columns in
// multiples of gemmNR when C has few rows.
func (c *cpuDevice) pgemm(m, n, k int, alpha float32, A, B mat, C []float32, ldc int) {
	if m == 0 || n == 0 || k == 0 {
		return
	}
	c.gemmBufs()
	flops := 2 * m * n * k
	tasks := min(2*c.pool.threads, flops/(32*c.pool.minFlops)+1)
	a := c.args()
	a.m[0], a.m[1], a.s[0], a.x[0] = A, B, C, alpha
	a.i[0], a.i[1], a.i[2], a.i[3] = m, n, k, ldc
	if m >= 4*gemmMR*tasks || m >= n {
		chunk := (m + tasks - 1) / tasks
		chunk = (chunk + gemmMR - 1) / gemmMR * gemmMR
		c.pool.For(m, chunk, gemmRowBlock, a)
		return
	}
	chunk := (n + tasks - 1) / tasks
	chunk = (chunk + gemmNR - 1) / gemmNR * gemmNR
	c.pool.For(n, chunk, gemmColBlock, a)
}

// gemmRowBlock: rows [lo, hi) of C.
func gemmRowBlock(a *opArgs, w, lo, hi int) {
	A, B, C, alpha := a.m[0], a.m[1], a.s[0], a.x[0]
	n, k, ldc := a.i[1], a.i[2], a.i[3]
	a.c.gb[w].gemm(hi-lo, n, k, alpha, mat{A.d[lo*A.rs:], A.rs, A.cs}, B, C[lo*ldc:], ldc)
}

// gemmColBlock: columns [lo, hi) of C.
func gemmColBlock(a *opArgs, w, lo, hi int) {
	A, B, C, alpha := a.m[0], a.m[1], a.s[0], a.x[0]
	m, k, ldc := a.i[0], a.i[2], a.i[3]
	a.c.gb[w].gemm(m, hi-lo, k, alpha, A, mat{B.d[lo*B.cs:], B.rs, B.cs}, C[lo:], ldc)
}
