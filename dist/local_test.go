package dist

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

func tensorOf(v []float32) *kernels.Tensor {
	return &kernels.Tensor{DType: kernels.F32, Shape: []int{len(v)}, F32: v}
}

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// Every collective against a plain host computation, at several world sizes, on fresh random
// inputs; reductions must be bit-identical to the rank-order fp32 sum.
func TestLocalCollectives(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, N := range []int{1, 2, 3, 4} {
		k := 5 + r.IntN(7)
		ins := make([][]float32, N)
		for q := range ins {
			ins[q] = randVec(r, N*k)
		}
		sum := make([]float32, N*k)
		for i := range sum {
			s := ins[0][i]
			for q := 1; q < N; q++ {
				s += ins[q][i]
			}
			sum[i] = s
		}
		mean := make([]float32, len(sum))
		for i, s := range sum {
			mean[i] = s / float32(N)
		}
		gathered := make([]float32, 0, N*k)
		for q := 0; q < N; q++ {
			gathered = append(gathered, ins[q][:k]...)
		}
		root := r.IntN(N)

		got := make([]map[string][]float32, N)
		err := Run(Local(N), func(rank int, c Comm) error {
			if c.Rank() != rank || c.Size() != N {
				return errors.New("rank/size")
			}
			m := map[string][]float32{}
			got[rank] = m
			a := tensorOf(append([]float32(nil), ins[rank]...))
			if err := c.AllReduce(a, Sum); err != nil {
				return err
			}
			m["sum"] = a.F32
			a = tensorOf(append([]float32(nil), ins[rank]...))
			if err := c.AllReduce(a, Mean); err != nil {
				return err
			}
			m["mean"] = a.F32
			out := tensorOf(make([]float32, k))
			if err := c.ReduceScatter(out, tensorOf(append([]float32(nil), ins[rank]...)), Sum); err != nil {
				return err
			}
			m["rs"] = out.F32
			// in place: in is rank's own slice of the buffer
			buf := tensorOf(append([]float32(nil), ins[rank]...))
			if err := c.ReduceScatter(buf.View(rank*k, k), buf, Mean); err != nil {
				return err
			}
			m["rs_inplace"] = append([]float32(nil), buf.F32[rank*k:(rank+1)*k]...)
			ag := tensorOf(make([]float32, N*k))
			if err := c.AllGather(ag, tensorOf(append([]float32(nil), ins[rank][:k]...))); err != nil {
				return err
			}
			m["ag"] = ag.F32
			g2 := tensorOf(make([]float32, N*k))
			copy(g2.F32[rank*k:], ins[rank][:k])
			if err := c.AllGather(g2, g2.View(rank*k, k)); err != nil {
				return err
			}
			m["ag_inplace"] = g2.F32
			b := tensorOf(append([]float32(nil), ins[rank]...))
			if err := c.Broadcast(b, root); err != nil {
				return err
			}
			m["bc"] = b.F32
			rd := tensorOf(append([]float32(nil), ins[rank]...))
			if err := c.Reduce(rd, Mean, root); err != nil {
				return err
			}
			m["reduce"] = rd.F32
			return c.Wait()
		})
		if err != nil {
			t.Fatalf("N=%d: %v", N, err)
		}
		for q := 0; q < N; q++ {
			m := got[q]
			reduced := ins[q] // Reduce: the root gets the mean, the others keep their input
			if q == root {
				reduced = mean
			}
			for _, c := range []struct {
				name string
				want []float32
			}{{"sum", sum}, {"mean", mean}, {"rs", sum[q*k : (q+1)*k]}, {"rs_inplace", mean[q*k : (q+1)*k]},
				{"ag", gathered}, {"ag_inplace", gathered}, {"bc", ins[root]}, {"reduce", reduced}} {
				if len(m[c.name]) != len(c.want) {
					t.Fatalf("N=%d rank %d %s: %d values, want %d", N, q, c.name, len(m[c.name]), len(c.want))
				}
				for i := range c.want {
					if m[c.name][i] != c.want[i] {
						t.Fatalf("N=%d rank %d %s[%d] = %v, want %v (bit-exact)", N, q, c.name, i, m[c.name][i], c.want[i])
					}
				}
			}
		}
	}
}

// A rank that never arrives: the others fail within the timeout, naming the collective and the
// missing rank, instead of hanging.
func TestLocalTimeoutNamesMissingRank(t *testing.T) {
	cs := LocalTimeout(3, 200*time.Millisecond)
	start := time.Now()
	errs := make(chan error, 2)
	for r := 0; r < 2; r++ {
		go func(r int) { errs <- cs[r].AllReduce(tensorOf([]float32{1, 2}), Sum) }(r)
	}
	for i := 0; i < 2; i++ {
		err := <-errs
		if err == nil || !strings.Contains(err.Error(), "AllReduce #0") || !strings.Contains(err.Error(), "rank 2 did not arrive") {
			t.Fatalf("want a timeout naming AllReduce #0 and rank 2, got %v", err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	// the communicator stays failed
	if err := cs[2].AllReduce(tensorOf([]float32{1, 2}), Sum); err == nil {
		t.Fatal("collective after a failure succeeded")
	}
	if err := cs[0].Wait(); err == nil {
		t.Fatal("Wait after a failure returned nil")
	}
}

// A rank that errors out (Run closes its handle) stops the others at once, and Run reports the
// rank's own error, not the echoes.
func TestLocalRunStopsOnRankError(t *testing.T) {
	boom := errors.New("boom")
	start := time.Now()
	err := Run(Local(3), func(rank int, c Comm) error {
		if rank == 1 {
			return boom
		}
		for i := 0; i < 3; i++ {
			if err := c.AllReduce(tensorOf([]float32{1}), Sum); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "rank 1 of 3") {
		t.Fatalf("want rank 1's error, got %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v (the default timeout is %v: Close did not release the others)", d, DefaultLocalTimeout)
	}
}

// Mismatched calls are an error on every rank, not a wrong result.
func TestLocalMismatch(t *testing.T) {
	err := Run(Local(2), func(rank int, c Comm) error {
		return c.AllReduce(tensorOf(make([]float32, 3+rank)), Sum)
	})
	if err == nil || !strings.Contains(err.Error(), "another rank AllReduce") {
		t.Fatalf("want a mismatch error, got %v", err)
	}
	err = Run(Local(2), func(rank int, c Comm) error {
		if rank == 0 {
			return c.AllReduce(tensorOf(make([]float32, 2)), Sum)
		}
		return c.Broadcast(tensorOf(make([]float32, 2)), 0)
	})
	if err == nil || !strings.Contains(err.Error(), "collective #0") {
		t.Fatalf("want a mismatch error, got %v", err)
	}
}

// Mark counts the collectives a rank has called; WaitFor is Wait (they are done on return) and
// reports a failure of the communicator.
func TestLocalTickets(t *testing.T) {
	cs := LocalTimeout(2, time.Second)
	err := Run(cs, func(rank int, c Comm) error {
		if m := c.Mark(); m != 0 {
			return fmt.Errorf("Mark before any collective = %d, want 0", m)
		}
		x := kernels.CPU().Alloc(kernels.F32, 3)
		for i := 0; i < 2; i++ {
			if err := c.AllReduce(x, Sum); err != nil {
				return err
			}
		}
		if m := c.Mark(); m != 2 {
			return fmt.Errorf("Mark after 2 collectives = %d, want 2", m)
		}
		return c.WaitFor(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	cs = LocalTimeout(2, time.Second)
	cs[1].Close()
	x := kernels.CPU().Alloc(kernels.F32, 3)
	if err := cs[0].AllReduce(x, Sum); err == nil {
		t.Fatal("AllReduce with a closed rank: no error")
	}
	if err := cs[0].WaitFor(cs[0].Mark()); err == nil || !strings.Contains(err.Error(), "rank 1 closed") {
		t.Fatalf("WaitFor after the failure: %v, want the failure naming rank 1", err)
	}
}
