//go:build !amd64

package kernels

func expShift(x []float32, m float32) float32 {
	var sum float32
	for i, v := range x {
		p := exp32(v - m)
		x[i] = p
		sum += p
	}
	return sum
}

func maxf(x []float32) float32 {
	mx := float32(negInf)
	for _, v := range x {
		mx = max(mx, v)
	}
	return mx
}

func geluVec(out, x []float32) int       { return 0 }
func geluBackVec(dx, g, x []float32) int { return 0 }
