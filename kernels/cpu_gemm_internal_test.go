package kernels

import (
	"math"
	"math/rand"
	"testing"
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// TestGemm checks the packed GEMM (both micro-kernels) against a float64 triple loop on random
// shapes that hit every edge (partial micro-tiles, several KC/NC/MC blocks) and every transpose.
func TestGemm(t *testing.T) {
	seed := time.Now().UnixNano()
	r := rand.New(rand.NewSource(seed))
	defer func() {
		if t.Failed() {
			t.Logf("seed %d", seed)
		}
	}()
	kernels := []bool{false}
	if useAVX2 {
		kernels = append(kernels, true)
	}
	saved := useAVX2
	defer func() { useAVX2 = saved }()
	buf := newGemmBuf()
	shapes := [][3]int{{1, 1, 1}, {6, 16, 1}, {7, 17, 3}, {13, 33, 300}, {100, 530, 70}, {200, 40, 600}, {5, 1100, 9}}
	for _, avx := range kernels {
		useAVX2 = avx
		for _, s := range shapes {
			m, n, k := s[0], s[1], s[2]
			for _, tr := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
				a, b := randVec(r, m*k), randVec(r, k*n)
				A := mat{a, k, 1}
				if tr[0] {
					A = mat{a, 1, m}
				}
				B := mat{b, n, 1}
				if tr[1] {
					B = mat{b, 1, k}
				}
				ldc := n + r.Intn(3)
				c := randVec(r, m*ldc)
				want := make([]float64, len(c))
				alpha := float32(r.NormFloat64())
				for i := 0; i < m; i++ {
					for j := 0; j < ldc; j++ {
						want[i*ldc+j] = float64(c[i*ldc+j])
						if j >= n {
							continue
						}
						var s float64
						for p := 0; p < k; p++ {
							s += float64(A.d[i*A.rs+p*A.cs]) * float64(B.d[p*B.rs+j*B.cs])
						}
						want[i*ldc+j] += float64(alpha) * s
					}
				}
				buf.gemm(m, n, k, alpha, A, B, c, ldc)
				var num, den float64
				for i := range c {
					d := float64(c[i]) - want[i]
					num += d * d
					den += want[i] * want[i]
				}
				if e := math.Sqrt(num / den); !(e < 2e-6) {
					t.Errorf("avx2=%v m=%d n=%d k=%d trans=%v: relative error %.3g", avx, m, n, k, tr, e)
				}
			}
		}
	}
}

func randVec(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	return x
}

// BenchmarkGemm: one worker, 256×384×384 (a row block of the small preset's linear layers), our
// packed GEMM with each micro-kernel, and gonum's Sgemm (blas32.Gemm) on the same operands.
func BenchmarkGemm(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	m, n, k := 256, 384, 384
	a, bb, c := randVec(r, m*k), randVec(r, n*k), make([]float32, m*n)
	buf := newGemmBuf()
	b.Run("gonum", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			blas32.Gemm(blas.NoTrans, blas.Trans, 1, blas32.General{Rows: m, Cols: k, Stride: k, Data: a},
				blas32.General{Rows: n, Cols: k, Stride: k, Data: bb}, 1, blas32.General{Rows: m, Cols: n, Stride: n, Data: c})
		}
		b.ReportMetric(2*float64(m*n*k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	})
	for _, avx := range []bool{false, true} {
		if avx && !useAVX2 {
			continue
		}
		name := "go"
		if avx {
			name = "avx2"
		}
		b.Run(name, func(b *testing.B) {
			saved := useAVX2
			useAVX2 = avx
			defer func() { useAVX2 = saved }()
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				buf.gemm(m, n, k, 1, mat{a, k, 1}, mat{bb, 1, k}, c, n)
			}
			b.ReportMetric(2*float64(m*n*k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// TestExp32 compares the fast exp with math.Exp over the range the softmax uses.
func TestExp32(t *testing.T) {
	var worst float64
	for x := -90.0; x <= 88.0; x += 0.001237 {
		got, want := float64(exp32(float32(x))), math.Exp(float64(float32(x)))
		if want < 1e-37 { // below the normal range: only ask for an absolute match
			if math.Abs(got-want) > 2e-38 { // flushed to 0 below −87.3
				t.Fatalf("exp32(%g) = %g, want %g", x, got, want)
			}
			continue
		}
		worst = max(worst, math.Abs(got-want)/want)
	}
	if worst > 3e-7 {
		t.Errorf("exp32: worst relative error %.3g > 3e-7", worst)
	}
	t.Logf("exp32: worst relative error %.3g", worst)
}

// TestExpShiftMax checks the vector softmax helpers (AVX2 where present, and the Go path) against
// math.Exp and a plain max on random rows of every length mod 8.
func TestExpShiftMax(t *testing.T) {
	r := rand.New(rand.NewSource(time.Now().UnixNano()))
	saved := useAVX2
	defer func() { useAVX2 = saved }()
	for _, avx := range []bool{false, saved} {
		useAVX2 = avx
		for n := 0; n < 70; n++ {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.NormFloat64() * 20)
			}
			want := float32(math.Inf(-1))
			for _, v := range x {
				want = max(want, v)
			}
			if got := maxf(x); got != want {
				t.Fatalf("avx2=%v n=%d: maxf = %g, want %g", avx, n, got, want)
			}
			m := want
			ref := make([]float64, n)
			var refSum float64
			for i, v := range x {
				ref[i] = math.Exp(float64(v - m)) // the argument rounded to fp32, as the op forms it
				refSum += ref[i]
			}
			sum := expShift(x, m)
			for i := range x {
				if e := math.Abs(float64(x[i]) - ref[i]); e > 3e-7*ref[i]+2e-38 {
					t.Fatalf("avx2=%v n=%d: exp(%d) = %g, want %g", avx, n, i, x[i], ref[i])
				}
			}
			if n > 0 && math.Abs(float64(sum)-refSum) > 1e-6*refSum {
				t.Fatalf("avx2=%v n=%d: sum %g, want %g", avx, n, sum, refSum)
			}
		}
	}
}
