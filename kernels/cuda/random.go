package cuda

import (
	"unsafe"

	"github.com/fewstep/fewstep/kernels"
)

const maxKeys = 64 // slabs per launch of rand_normal_philox (keys by value: Keys in random.cu)

// u64 passes one 64-bit unsigned value.
func (a *argBuf) u64(v uint64) *argBuf { *(*uint64)(cptr(a.slot(8))) = v; return a }

// u64s passes up to maxKeys values as the by-value struct Keys of random.cu (unused slots zero).
func (a *argBuf) u64s(vs []uint64) *argBuf {
	p := a.slot(8 * maxKeys)
	dst := unsafe.Slice((*uint64)(cptr(p)), maxKeys)
	clear(dst)
	copy(dst, vs)
	return a
}

// RandnPhilox fills t's len(keys) slabs with N(0, 1) from Philox4x32-10 (kernels/philox.go), in
// launches of up to maxKeys slabs. No host synchronization; capturable in a graph.
func (d *Device) RandnPhilox(t *kernels.Tensor, keys []uint64, counter uint64) {
	n := t.Numel()
	must(len(keys) > 0 && n%len(keys) == 0, "RandnPhilox: %d keys for %v (want one key per equal slab)", len(keys), t)
	if !d.begin(n == 0, t) {
		return
	}
	defer d.leave()
	d.touch(t)
	per := n / len(keys)
	nq := (per + 3) / 4
	for b0 := 0; b0 < len(keys); b0 += maxKeys {
		ks := keys[b0:min(b0+maxKeys, len(keys))]
		v := t.View(b0*per, len(ks)*per)
		d.args.reset().t(v).u64s(ks).u64(counter).i64(per).i64(nq).i64(len(ks) * nq)
		d.ew("rand_normal_philox", len(ks)*nq)
	}
}
