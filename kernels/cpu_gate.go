package kernels

import "math"

// The gated optimizer step on the CPU (gate.go has the contract). Ops run at once here, so
// ReadAsync copies at once.

func (c *cpuDevice) StepGate(gate, acc *Tensor, mask uint32, roles, deferred int, clip float64, hostOK bool) {
	checkGate("StepGate", gate, acc, mask, roles, deferred)
	g, a := f32(gate), f32(acc)
	sq := func(i int) float64 { return f64Of(a[2*i], a[2*i+1]) }
	ok := hostOK
	for i := 0; i < roles; i++ {
		if mask>>i&1 != 0 && !finite64(sq(i)) {
			ok = false
		}
	}
	for j := roles; j < roles+deferred; j++ {
		if !finite64(sq(j)) {
			ok = false
		}
	}
	g[0] = 0
	if ok {
		g[0] = 1
	}
	for i := 0; i < roles; i++ {
		if mask>>i&1 == 0 {
			continue
		}
		g[2+2*i] = clipFactor(sq(i), clip)
		if ok {
			SetGateCount(g, i, GateCount(g, i)+1)
		}
	}
}

// checkGate panics on a gate or accumulator of the wrong size (a programming error).
func checkGate(op string, gate, acc *Tensor, mask uint32, roles, deferred int) {
	if !(gate.DType == F32 && gate.Numel() == GateLen(roles)) {
		panicf("%s: gate %v for %d roles, want F32 [%d]", op, gate, roles, GateLen(roles))
	}
	if !(acc.DType == F32 && acc.Numel() >= 2*(roles+deferred)) {
		panicf("%s: accumulators %v hold fewer than %d roles + %d deferred float64s", op, acc, roles, deferred)
	}
	if roles > 32 || (roles < 32 && mask>>roles != 0) {
		panicf("%s: mask %#x for %d roles (at most 32)", op, mask, roles)
	}
}

func finite64(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

func (c *cpuDevice) AdamWGated(w, g, m, v, gate *Tensor, role int, lr, beta1, beta2, eps, wd float32) {
	n := sameNumel("AdamWGated", w, g, m, v)
	gt := f32(gate)
	if !(gate.DType == F32 && 3+2*role < len(gt) && role >= 0) {
		panicf("AdamWGated: role %d of gate %v", role, gate)
	}
	if !GateOK(gt) || n == 0 {
		return
	}
	step := GateCount(gt, role)
	if !(step >= 1) {
		panicf("AdamWGated: role %d's step count %d < 1 with ok set", role, step)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	stepSize, rbc2 := AdamScalars(lr, beta1, beta2, step)
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3] = f32(w), f32(g), f32(m), f32(v)
	a.x[0], a.x[1] = beta1, beta2
	a.x[2], a.x[3] = stepSize, rbc2
	a.x[4], a.x[5] = eps, 1-lr*wd
	a.x[6] = GateClip(gt, role)
	c.pool.For(n, c.pool.grain(n, 13), adamRows, a) // on g·clip: what Scale(g, clip) would have stored
}

func (c *cpuDevice) EMAGated(ema, w, gate *Tensor, decay float32) {
	n := sameNumel("EMAGated", ema, w)
	if !GateOK(f32(gate)) || n == 0 {
		return
	}
	if decay == 0 {
		c.Copy(ema, w)
		return
	}
	c.EMA(ema, w, decay)
}

// cpuReadback holds a copy made at ReadAsync.
type cpuReadback []float32

func (r cpuReadback) Wait(dst []float32) error {
	if len(dst) != len(r) {
		panicf("Readback.Wait: %d values into %d", len(r), len(dst))
	}
	copy(dst, r)
	return nil
}

func (c *cpuDevice) ReadAsync(src *Tensor) Readback {
	if src.DType != F32 {
		panicf("ReadAsync: %v is not F32", src)
	}
	return cpuReadback(append([]float32(nil), f32(src)...))
}
