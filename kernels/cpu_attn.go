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
	c.rope("RoPE", x, frames, rows, cols, frame0, 1)
}

func (c *cpuDevice) RoPEBack(dx *Tensor, frames, rows, cols, frame0 int) {
	c.rope("RoPEBack", dx, frames, rows, cols, frame0, -1)
}

// rope rotates the interleaved pairs (x[2j], x[2j+1]) of every head by +angle (dir 1) or −angle.
func (c *cpuDevice) rope(op string, x *Tensor, frames, rows, cols, frame0 int, dir float32) {
	must(len(x.Shape) == 4, "%s: x %v is not [B,N,heads,hd]", op, x.Shape)
	B, N, H, hd := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	must(hd%2 == 0 && N == frames*rows*cols, "%s: x %v for grid %d×%d×%d", op, x.Shape, frames, rows, cols)
	fc, fs, hc, hs, wc, ws := c.ropeTables(hd, frames, rows, cols, frame0)
	nf, nh, nw := ropeSplit(hd)
	xx := f32(x)
	c.pool.For(B*N, c.pool.grain(B*N, 3*H*hd), func(_, lo, hi int) {
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
	})
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
	must(len(q.Shape) == 4 && len(k.Shape) == 4, "%s: q %v k %v are not [B,N,H,hd]", op, q.Shape, k.Shape)
	B, Nq, H, hd = q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	Nk = k.Shape[1]
	must(k.Shape[0] == B && k.Shape[2] == H && k.Shape[3] == hd, "%s: q %v k %v", op, q.Shape, k.Shape)
	must(v.Numel() == k.Numel(), "%s: k %v v %v", op, k.Shape, v.Shape)
	must(out.Numel() == q.Numel(), "%s: q %v out %v", op, q.Shape, out.Shape)
	must(lse.Numel() == B*H*Nq, "%s: lse %v for [B=%d,H=%d,Nq=%d]", op, lse.Shape, B, H, Nq)
	return
}

// visible is the number of keys (a prefix 0..jmax−1) query i sees.
func visible(i, Nk, chunkTokens, qOffset int) int {
	if chunkTokens == 0 {
		return Nk
	}
	return min(Nk, ((qOffset+i)/chunkTokens+1)*chunkTokens)
}

// Attention: per (b, h, i), scores over the visible keys, a stable softmax, out = P·V,
// lse = max + log Σ exp(s − max) (natural log, scores already scaled by 1/√hd).
func (c *cpuDevice) Attention(out, lse, q, k, v *Tensor, chunkTokens, qOffset int) {
	B, Nq, Nk, H, hd := attnDims("Attention", out, lse, q, k, v)
	must(chunkTokens >= 0 && qOffset >= 0, "Attention: chunkTokens %d qOffset %d", chunkTokens, qOffset)
	o, L, qq, kk, vv := f32(out), f32(lse), f32(q), f32(k), f32(v)
	scale := float32(1 / math.Sqrt(float64(hd)))
	scratch := c.scratch(Nk)
	c.pool.For(B*H*Nq, c.pool.grain(B*H*Nq, 4*Nk*hd), func(w, lo, hi int) {
		s := scratch[w][:Nk]
		for idx := lo; idx < hi; idx++ {
			bh, i := idx/Nq, idx%Nq
			b, h := bh/H, bh%H
			jmax := visible(i, Nk, chunkTokens, qOffset)
			qi := qq[((b*Nq+i)*H+h)*hd:][:hd]
			mx := float32(math.Inf(-1))
			for j := 0; j < jmax; j++ {
				kj := kk[((b*Nk+j)*H+h)*hd:][:hd]
				var d float32
				for e, qe := range qi {
					d += qe * kj[e]
				}
				d *= scale
				s[j] = d
				mx = max(mx, d)
			}
			var sum float64
			for j := 0; j < jmax; j++ {
				p := float32(math.Exp(float64(s[j] - mx)))
				s[j] = p
				sum += float64(p)
			}
			oi := o[((b*Nq+i)*H+h)*hd:][:hd]
			clear(oi)
			for j := 0; j < jmax; j++ {
				vj := vv[((b*Nk+j)*H+h)*hd:][:hd]
				p := s[j]
				for e, ve := range vj {
					oi[e] += p * ve
				}
			}
			inv := float32(1 / sum)
			for e := range oi {
				oi[e] *= inv
			}
			L[bh*Nq+i] = mx + float32(math.Log(sum))
		}
	})
}

// AttentionBack recomputes P = exp(s − lse) and accumulates
// dV += Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O)), dQ += dS·K/√hd, dK += dSᵀ·Q/√hd.
// Parallel over (b, h): each task owns its rows of dQ, dK and dV.
func (c *cpuDevice) AttentionBack(dQ, dK, dV, dOut, out, lse, q, k, v *Tensor, chunkTokens, qOffset int) {
	B, Nq, Nk, H, hd := attnDims("AttentionBack", out, lse, q, k, v)
	sameNumel("AttentionBack", q, dOut, dQ)
	sameNumel("AttentionBack", k, dK, dV)
	dq, dk, dv, g, o, L, qq, kk, vv := f32(dQ), f32(dK), f32(dV), f32(dOut), f32(out), f32(lse), f32(q), f32(k), f32(v)
	scale := float32(1 / math.Sqrt(float64(hd)))
	c.pool.For(B*H, 1, func(_, lo, hi int) {
		for bh := lo; bh < hi; bh++ {
			b, h := bh/H, bh%H
			for i := 0; i < Nq; i++ {
				jmax := visible(i, Nk, chunkTokens, qOffset)
				qi := qq[((b*Nq+i)*H+h)*hd:][:hd]
				gi := g[((b*Nq+i)*H+h)*hd:][:hd]
				oi := o[((b*Nq+i)*H+h)*hd:][:hd]
				var Di float32
				for e := range gi {
					Di += gi[e] * oi[e]
				}
				li := L[bh*Nq+i]
				for j := 0; j < jmax; j++ {
					kj := kk[((b*Nk+j)*H+h)*hd:][:hd]
					vj := vv[((b*Nk+j)*H+h)*hd:][:hd]
					var sd, dp float32
					for e, qe := range qi {
						sd += qe * kj[e]
						dp += gi[e] * vj[e]
					}
					p := float32(math.Exp(float64(sd*scale - li)))
					if dv != nil {
						dvj := dv[((b*Nk+j)*H+h)*hd:][:hd]
						for e, ge := range gi {
							dvj[e] += p * ge
						}
					}
					ds := p * (dp - Di) * scale
					if dq != nil {
						dqi := dq[((b*Nq+i)*H+h)*hd:][:hd]
						for e, ke := range kj {
							dqi[e] += ds * ke
						}
					}
					if dk != nil {
						dkj := dk[((b*Nk+j)*H+h)*hd:][:hd]
						for e, qe := range qi {
							dkj[e] += ds * qe
						}
					}
				}
			}
		}
	})
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
