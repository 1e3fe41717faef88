package kernels

import "math"

// Rearrangements, the time embedding, broadcasts and token means on the CPU.

// Patchify: x [B,C,F,H,W] → out [B, F·h·w, 4C], features (c, pt, ph, pw) with pt = 0:
// out[b, (f,i,j), c·4 + ph·2 + pw] = x[b, c, f, 2i+ph, 2j+pw].
func (c *cpuDevice) Patchify(out, x *Tensor, B, C, F, H, W int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.patch("Patchify", f32(out), f32(x), out, x, B, C, F, H, W, false, false)
}

func (c *cpuDevice) PatchifyBack(dX, dOut *Tensor, B, C, F, H, W int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.patch("PatchifyBack", f32(dOut), f32(dX), dOut, dX, B, C, F, H, W, false, true)
}

// Unpatchify: in [B, N, 4C] with features (pt, ph, pw, c) → out [B,C,F,H,W]:
// out[b, c, f, 2i+ph, 2j+pw] = in[b, (f,i,j), (ph·2+pw)·C + c].
func (c *cpuDevice) Unpatchify(out, in *Tensor, B, C, F, H, W int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.patch("Unpatchify", f32(in), f32(out), in, out, B, C, F, H, W, true, false)
}

func (c *cpuDevice) UnpatchifyBack(dIn, dOut *Tensor, B, C, F, H, W int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.patch("UnpatchifyBack", f32(dIn), f32(dOut), dIn, dOut, B, C, F, H, W, true, true)
}

// patch moves between tokens tok [B, N, 4C] and video vid [B,C,F,H,W]. channelLast picks the
// feature order (pt,ph,pw,c) instead of (c,pt,ph,pw). toVideo: vid += tok (a backward of Patchify
// or the forward of Unpatchify, which overwrites); otherwise tok = vid (or tok += vid).
func (c *cpuDevice) patch(op string, tok, vid []float32, tt, vt *Tensor, B, C, F, H, W int, channelLast, accumulate bool) {
	if !(H%2 == 0 && W%2 == 0) {
		panicf("%s: H=%d W=%d must be even", op, H, W)
	}
	h, w := H/2, W/2
	N := F * h * w
	if !(tt.Numel() == B*N*4*C) {
		panicf("%s: tokens %v for B=%d N=%d 4C=%d", op, tt.Shape, B, N, 4*C)
	}
	if !(vt.Numel() == B*C*F*H*W) {
		panicf("%s: video %v for [%d,%d,%d,%d,%d]", op, vt.Shape, B, C, F, H, W)
	}
	// Which side is written: Patchify forward writes tok; PatchifyBack writes vid (+=);
	// Unpatchify forward writes vid; UnpatchifyBack writes tok (+=).
	writeVid := channelLast != accumulate
	g := c.args()
	g.s[0], g.s[1] = tok, vid
	g.i[0], g.i[1], g.i[2], g.i[3], g.i[4] = C, F, H, W, 0
	if channelLast {
		g.i[4] |= 1
	}
	if accumulate {
		g.i[4] |= 2
	}
	if writeVid {
		g.i[4] |= 4
	}
	rows := B * F * h // one row of w tokens
	c.pool.For(rows, c.pool.grain(rows, 4*C*w), patchRows, g)
}

// patchRows moves the token rows [lo, hi) (b, f, i) between tok and vid as patch's flags say.
func patchRows(a *opArgs, _, lo, hi int) {
	tok, vid := a.s[0], a.s[1]
	C, F, H, W := a.i[0], a.i[1], a.i[2], a.i[3]
	channelLast, accumulate, writeVid := a.i[4]&1 != 0, a.i[4]&2 != 0, a.i[4]&4 != 0
	h, w := H/2, W/2
	N := F * h * w
	for r := lo; r < hi; r++ {
		b, f, i := r/(F*h), (r/h)%F, r%h
		for j := 0; j < w; j++ {
			n := (f*h+i)*w + j
			tb := (b*N + n) * 4 * C
			for ch := 0; ch < C; ch++ {
				for ph := 0; ph < 2; ph++ {
					for pw := 0; pw < 2; pw++ {
						vi := (((b*C+ch)*F+f)*H+2*i+ph)*W + 2*j + pw
						var ti int
						if channelLast {
							ti = tb + (ph*2+pw)*C + ch
						} else {
							ti = tb + ch*4 + ph*2 + pw
						}
						switch {
						case writeVid && accumulate:
							vid[vi] += tok[ti]
						case writeVid:
							vid[vi] = tok[ti]
						case accumulate:
							tok[ti] += vid[vi]
						default:
							tok[ti] = vid[vi]
						}
					}
				}
			}
		}
	}
}

// Sinusoid: out[m] = [cos(t_m·f_i), sin(t_m·f_i)], f_i = 10000^(−i/half), in float64.
func (c *cpuDevice) Sinusoid(out, t *Tensor, half int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	M := t.Numel()
	if !(out.Numel() == M*2*half) {
		panicf("Sinusoid: out %v for %d timesteps and half=%d", out.Shape, M, half)
	}
	o, tt := f32(out), f32(t)
	for m := 0; m < M; m++ {
		tv := float64(tt[m])
		for i := 0; i < half; i++ {
			a := tv * math.Pow(10000, -float64(i)/float64(half))
			o[m*2*half+i] = float32(math.Cos(a))
			o[m*2*half+half+i] = float32(math.Sin(a))
		}
	}
}

// AddBroadcast: out[m, :] = a + b[m, :] with a of KD elements broadcast over M = numel/KD.
func (c *cpuDevice) AddBroadcast(out, a, b *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("AddBroadcast", out, b)
	KD := a.Numel()
	if !(KD > 0 && n%KD == 0) {
		panicf("AddBroadcast: a %v does not tile b %v", a.Shape, b.Shape)
	}
	g := c.args()
	g.s[0], g.s[1], g.s[2] = f32(out), f32(a), f32(b)
	c.pool.For(n, c.pool.grain(n, 1), addBroadcastRows, g)
}

func addBroadcastRows(a *opArgs, _, lo, hi int) {
	o, aa, bb := a.s[0], a.s[1], a.s[2]
	KD := len(aa)
	for i := lo; i < hi; i++ {
		o[i] = aa[i%KD] + bb[i]
	}
}

// AddBroadcastBack: dA += Σ_m dOut[m, :], dB += dOut.
func (c *cpuDevice) AddBroadcastBack(dA, dB, dOut *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := dOut.Numel()
	if dB != nil {
		sameNumel("AddBroadcastBack", dOut, dB)
		c.axpy(dB, 1, dOut)
	}
	if dA == nil {
		return
	}
	KD := dA.Numel()
	if !(KD > 0 && n%KD == 0) {
		panicf("AddBroadcastBack: dA %v does not tile dOut %v", dA.Shape, dOut.Shape)
	}
	g := c.args()
	g.s[0], g.s[1] = f32(dA), f32(dOut)
	c.pool.For(KD, c.pool.grain(KD, n/KD), broadcastGradCols, g)
}

// broadcastGradCols: dA[k] += Σ_m dOut[m·KD + k] for k in [lo, hi).
func broadcastGradCols(a *opArgs, _, lo, hi int) {
	da, g := a.s[0], a.s[1]
	KD := len(da)
	M := len(g) / KD
	for k := lo; k < hi; k++ {
		var s float64
		for m := 0; m < M; m++ {
			s += float64(g[m*KD+k])
		}
		da[k] += float32(s)
	}
}

// MeanTokens: out[b,:] = mean_n in[b,n,:].
func (c *cpuDevice) MeanTokens(out, in *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !(len(in.Shape) == 3) {
		panicf("MeanTokens: in %v is not [B,N,D]", in.Shape)
	}
	B, N, D := in.Shape[0], in.Shape[1], in.Shape[2]
	if !(out.Numel() == B*D) {
		panicf("MeanTokens: out %v for in %v", out.Shape, in.Shape)
	}
	g := c.args()
	g.s[0], g.s[1], g.i[0], g.i[1] = f32(out), f32(in), N, D
	c.pool.For(B*D, c.pool.grain(B*D, N), meanTokenCols, g)
}

func meanTokenCols(a *opArgs, _, lo, hi int) {
	o, x, N, D := a.s[0], a.s[1], a.i[0], a.i[1]
	for i := lo; i < hi; i++ {
		b, d := i/D, i%D
		var s float64
		for n := 0; n < N; n++ {
			s += float64(x[(b*N+n)*D+d])
		}
		o[i] = float32(s / float64(N))
	}
}

// MeanTokensBack: dIn[b,n,:] += dOut[b,:]/N.
func (c *cpuDevice) MeanTokensBack(dIn, dOut *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !(len(dIn.Shape) == 3) {
		panicf("MeanTokensBack: dIn %v is not [B,N,D]", dIn.Shape)
	}
	B, N, D := dIn.Shape[0], dIn.Shape[1], dIn.Shape[2]
	if !(dOut.Numel() == B*D) {
		panicf("MeanTokensBack: dOut %v for dIn %v", dOut.Shape, dIn.Shape)
	}
	g := c.args()
	g.s[0], g.s[1], g.i[0], g.i[1] = f32(dIn), f32(dOut), N, D
	c.pool.For(B*N, c.pool.grain(B*N, D), meanTokenGradRows, g)
}

func meanTokenGradRows(a *opArgs, _, lo, hi int) {
	dx, g, N, D := a.s[0], a.s[1], a.i[0], a.i[1]
	inv := 1 / float32(N)
	for t := lo; t < hi; t++ {
		b := t / N
		gr, dr := g[b*D:(b+1)*D], dx[t*D:(t+1)*D]
		for i, v := range gr {
			dr[i] += v * inv
		}
	}
}
