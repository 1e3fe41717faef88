package kernels

//go:noescape
func expShiftAVX2(x *float32, n int, m float32, sums *[8]float32)

//go:noescape
func maxAVX2(x *float32, n int, lanes *[8]float32)

// expShift sets x[i] = e^(x[i] − m) and returns Σ x[i] (after).
func expShift(x []float32, m float32) float32 {
	n8 := len(x) &^ 7
	var sum float32
	if useAVX2 && n8 > 0 {
		var lanes [8]float32
		expShiftAVX2(&x[0], n8, m, &lanes)
		for _, v := range lanes {
			sum += v
		}
	} else {
		n8 = 0
	}
	for i := n8; i < len(x); i++ {
		p := exp32(x[i] - m)
		x[i] = p
		sum += p
	}
	return sum
}

// maxf returns max(x) (−Inf for an empty x).
func maxf(x []float32) float32 {
	mx := float32(negInf)
	n8 := len(x) &^ 7
	if useAVX2 && n8 > 0 {
		lanes := [8]float32{mx, mx, mx, mx, mx, mx, mx, mx}
		maxAVX2(&x[0], n8, &lanes)
		for _, v := range lanes {
			mx = max(mx, v)
		}
	} else {
		n8 = 0
	}
	for _, v := range x[n8:] {
		mx = max(mx, v)
	}
	return mx
}

//go:noescape
func geluAVX2(out, x *float32, n int)

//go:noescape
func geluBackAVX2(dx, dy, x *float32, n int)

// geluVec computes out[:n8] with AVX2 and returns n8 (0 without AVX2); the caller does the rest.
func geluVec(out, x []float32) int {
	n8 := len(x) &^ 7
	if !useAVX2 || n8 == 0 {
		return 0
	}
	geluAVX2(&out[0], &x[0], n8)
	return n8
}

func geluBackVec(dx, g, x []float32) int {
	n8 := len(x) &^ 7
	if !useAVX2 || n8 == 0 {
		return 0
	}
	geluBackAVX2(&dx[0], &g[0], &x[0], n8)
	return n8
}
