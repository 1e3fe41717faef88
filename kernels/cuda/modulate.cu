// adaLN modulation and the gated residual, per frame: token n of [B,N,D] belongs to frame
// f = n / tokensPerFrame and takes its (shift, scale, gate) rows from mod [B,F,K,D].
#include "common.cuh"

// build-fallback: -DNO_RED_V4

// out = x·(1 + mod[b,f,iScale]) + mod[b,f,iShift]
// sh, when not null, gets a bf16 copy of out (the bf16 operand of the GEMM that reads out next).
template <typename I>
__device__ __forceinline__ void mod_fwd_t(void *out, int dto, void *sh, const void *x, int dtx, const void *mod, int dtm,
                                          int iShift, int iScale, I N, I D, I F, I K, I tpf, ll n) {
    GRID_STRIDE_I(I, i, n) {
        I d = i % D, tok = i / D, b = tok / N, f = (tok % N) / tpf;
        I m = ((b * F + f) * K) * D + d;
        float y = ld(x, i, dtx) * (1.f + ld(mod, m + iScale * D, dtm)) + ld(mod, m + iShift * D, dtm);
        st(out, i, dto, y);
        if (sh) st(sh, i, 1, y);
    }
}
extern "C" __global__ void mod_fwd(void *out, int dto, void *sh, const void *x, int dtx, const void *mod, int dtm,
                                   int iShift, int iScale, ll N, ll D, int F, int K, ll tpf, ll n) {
    if (FITS32(n) && FITS32((ll)F * K * D * (n / (N * D) + 1)))
        mod_fwd_t<unsigned>(out, dto, sh, x, dtx, mod, dtm, iShift, iScale, (unsigned)N, (unsigned)D, F, K, (unsigned)tpf, n);
    else
        mod_fwd_t<ll>(out, dto, sh, x, dtx, mod, dtm, iShift, iScale, N, D, F, K, tpf, n);
}

// dX += dOut·(1 + scale); the dMod slices are column reductions done by colreduce.
template <typename I>
__device__ __forceinline__ void mod_bwd_x_t(void *dX, int dtdx, const void *dOut, int dtdo, const void *mod, int dtm,
                                            int iScale, I N, I D, I F, I K, I tpf, ll n) {
    GRID_STRIDE_I(I, i, n) {
        I d = i % D, tok = i / D, b = tok / N, f = (tok % N) / tpf;
        I m = ((b * F + f) * K + iScale) * D + d;
        st(dX, i, dtdx, ld(dX, i, dtdx) + ld(dOut, i, dtdo) * (1.f + ld(mod, m, dtm)));
    }
}
extern "C" __global__ void mod_bwd_x(void *dX, int dtdx, const void *dOut, int dtdo, const void *mod, int dtm,
                                     int iScale, ll N, ll D, int F, int K, ll tpf, ll n) {
    if (FITS32(n) && FITS32((ll)F * K * D * (n / (N * D) + 1)))
        mod_bwd_x_t<unsigned>(dX, dtdx, dOut, dtdo, mod, dtm, iScale, (unsigned)N, (unsigned)D, F, K, (unsigned)tpf, n);
    else
        mod_bwd_x_t<ll>(dX, dtdx, dOut, dtdo, mod, dtm, iScale, N, D, F, K, tpf, n);
}

// x += y·mod[b,f,iGate], or, for the backward, dY += dX·gate (same form).
template <typename I>
__device__ __forceinline__ void gate_add_t(void *x, int dtx, const void *y, int dty, const void *mod, int dtm,
                                           int iGate, I N, I D, I F, I K, I tpf, ll n) {
    GRID_STRIDE_I(I, i, n) {
        I d = i % D, tok = i / D, b = tok / N, f = (tok % N) / tpf;
        I m = ((b * F + f) * K + iGate) * D + d;
        st(x, i, dtx, ld(x, i, dtx) + ld(y, i, dty) * ld(mod, m, dtm));
    }
}
extern "C" __global__ void gate_add(void *x, int dtx, const void *y, int dty, const void *mod, int dtm,
                                    int iGate, ll N, ll D, int F, int K, ll tpf, ll n) {
    if (FITS32(n) && FITS32((ll)F * K * D * (n / (N * D) + 1)))
        gate_add_t<unsigned>(x, dtx, y, dty, mod, dtm, iGate, (unsigned)N, (unsigned)D, F, K, (unsigned)tpf, n);
    else
        gate_add_t<ll>(x, dtx, y, dty, mod, dtm, iGate, N, D, F, K, tpf, n);
}

// ---- fp32 fast paths: four elements per thread in 16-byte accesses (D % 4 == 0, aligned) ----

// mod_fwd for fp32: i over n/4 groups of 4 consecutive channels; out null: only the bf16 copy sh
// (a bf16 output tensor).
extern "C" __global__ void mod_fwd_f32x4(f32x4 *out, bf16x4 *sh, const f32x4 *x, const float *mod, int iShift, int iScale,
                                         unsigned N, unsigned D, unsigned F, unsigned K, unsigned tpf, ll n4) {
    unsigned D4 = D / 4;
    GRID_STRIDE_I(unsigned, i, n4) {
        unsigned d4 = i % D4, tok = i / D4, b = tok / N, f = (tok % N) / tpf;
        const f32x4 *m = (const f32x4 *)(mod + ((b * F + f) * K) * D) + d4;
        f32x4 sc = m[iScale * D4], sf = m[iShift * D4], v = x[i];
        f32x4 y = {v.x * (1.f + sc.x) + sf.x, v.y * (1.f + sc.y) + sf.y, v.z * (1.f + sc.z) + sf.z, v.w * (1.f + sc.w) + sf.w};
        if (out) out[i] = y;
        if (sh) sh[i] = bf16x4{f2bf(y.x), f2bf(y.y), f2bf(y.z), f2bf(y.w)};
    }
}

// gate_add for fp32: x = xin + y·gate (xin == x: the in-place x += y·gate; xin null: x = y·gate, a
// gradient whose zeroing was folded in, kernels.LazyZeroer).
extern "C" __global__ void gate_add_f32x4(f32x4 *x, const f32x4 *xin, const f32x4 *y, const float *mod, int iGate,
                                          unsigned N, unsigned D, unsigned F, unsigned K, unsigned tpf, ll n4) {
    unsigned D4 = D / 4;
    GRID_STRIDE_I(unsigned, i, n4) {
        unsigned d4 = i % D4, tok = i / D4, b = tok / N, f = (tok % N) / tpf;
        f32x4 g = ((const f32x4 *)(mod + ((b * F + f) * K + iGate) * D))[d4], u = y[i];
        f32x4 v = xin ? xin[i] : f32x4{0.f, 0.f, 0.f, 0.f};
        x[i] = f32x4{v.x + u.x * g.x, v.y + u.y * g.y, v.z + u.z * g.z, v.w + u.w * g.w};
    }
}


// gate_add_back_f32x4: GateAddBack of fp32 [B·N, D] rows in one pass: dY = dYin + dX·gate (dYin null:
// dY = dX·gate, a folded zeroing; dYin == dY: accumulated) and the gate's gradient
// dMod[b, f, iGate] += Σ_rows dX·y over the frame's tpf rows. Segment blockIdx.z = b·F + f (segRows =
// tpf rows, mod and dMod rows at (seg·K + iGate)·D); block 32×8 covers 128 columns (four a thread)
// and rowsPerBlock rows (a multiple of 8) of the segment, as colreduce_f32x4: each of dX, y read once.
// dB, when not null, also takes Σ dY over all rows (the bias gradient of the Linear whose output was
// gated), and shb, when not null, dY's bf16 copy (that Linear's GEMM operand).
__device__ __forceinline__ void gab_row(f32x4 &s, f32x4 &sy, f32x4 *dY, bf16x4 *shb, const f32x4 *dYin, const f32x4 *dX,
                                        const f32x4 *y, f32x4 g, ll i) {
    f32x4 u = dX[i], v = y[i];
    f32x4 a = dYin ? dYin[i] : f32x4{0.f, 0.f, 0.f, 0.f};
    f32x4 o = {a.x + u.x * g.x, a.y + u.y * g.y, a.z + u.z * g.z, a.w + u.w * g.w};
    dY[i] = o;
    if (shb) shb[i] = bf16x4{f2bf(o.x), f2bf(o.y), f2bf(o.z), f2bf(o.w)};
    s.x += u.x * v.x; s.y += u.y * v.y; s.z += u.z * v.z; s.w += u.w * v.w;
    sy.x += o.x; sy.y += o.y; sy.z += o.z; sy.w += o.w;
}
extern "C" __global__ void gate_add_back_f32x4(f32x4 *dY, const f32x4 *dYin, const f32x4 *dX, const f32x4 *y, const float *mod,
                                               float *dMod, int iGate, int K, ll segRows, int D, int rowsPerBlock, float *dB,
                                               bf16x4 *shb) {
    __shared__ f32x4 part[2][8][32];
    const int D4 = D / 4, c4 = blockIdx.x * 32 + threadIdx.x;  // this thread's float4 column
    const ll seg = blockIdx.z, gi = (seg * K + iGate) * D;
    ll r0 = (ll)blockIdx.y * rowsPerBlock, r1 = r0 + rowsPerBlock;
    if (r1 > segRows) r1 = segRows;
    f32x4 s = {0.f, 0.f, 0.f, 0.f}, sy = {0.f, 0.f, 0.f, 0.f};
    if (c4 < D4) {
        const f32x4 g = ((const f32x4 *)(mod + gi))[c4];
        ll r = r0 + threadIdx.y;
        for (; r + 24 < r1; r += 32) {  // four rows per step, their loads independent
            ll i = (seg * segRows + r) * D4 + c4;
            gab_row(s, sy, dY, shb, dYin, dX, y, g, i);
            gab_row(s, sy, dY, shb, dYin, dX, y, g, i + 8 * D4);
            gab_row(s, sy, dY, shb, dYin, dX, y, g, i + 16 * D4);
            gab_row(s, sy, dY, shb, dYin, dX, y, g, i + 24 * D4);
        }
        for (; r < r1; r += 8) gab_row(s, sy, dY, shb, dYin, dX, y, g, (seg * segRows + r) * D4 + c4);
    }
    part[0][threadIdx.y][threadIdx.x] = s;
    part[1][threadIdx.y][threadIdx.x] = sy;
    __syncthreads();
    // Warp 0 finishes the gate's sums (into the segment's row of dMod), warp 1 dY's (into dB).
    const int which = threadIdx.y;
    float *dst = which == 0 ? (dMod ? dMod + gi : nullptr) : which == 1 ? dB : nullptr;
    if (dst && c4 < D4) {
        f32x4 t = part[which][0][threadIdx.x];
        for (int k = 1; k < 8; k++) {
            f32x4 q = part[which][k][threadIdx.x];
            t.x += q.x; t.y += q.y; t.z += q.z; t.w += q.w;
        }
        red_add4(dst + 4 * c4, t);
    }
}
