// LayerNorm over the last dim D, with or without affine (Wan's norm1/norm2 have none, norm3 has both).
// One block per row; mean and rstd saved for the backward.
#include "common.cuh"

// build-fallback: -DNO_RED_V4

#define ROW_MAXE 16  // row elements a thread keeps in registers (D ≤ 16·blockDim.x: one read of x)

// shw (sh in the other kernels), when not null, gets a bf16 copy of out (the next GEMM's operand).
// The row is read once into registers when D ≤ ROW_MAXE·blockDim.x, else re-read per pass.
extern "C" __global__ void ln_fwd(void *out, int dto, void *shw, void *mean, void *rstd, int dts, const void *in, int dti,
                                  const void *w, const void *b, int dtw, ll D, float eps) {
    __shared__ float sh[32];
    ll row = blockIdx.x;
    const ll o = row * D;
    const int T = blockDim.x;
    float mu, rs;
    if (D <= (ll)ROW_MAXE * T) {
        float xv[ROW_MAXE];
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < ROW_MAXE; e++) {
            int c = threadIdx.x + e * T;
            xv[e] = c < D ? ld(in, o + c, dti) : 0.f;
            s += xv[e];
        }
        mu = block_sum(s, sh) / (float)D;
        float q = 0.f;
#pragma unroll
        for (int e = 0; e < ROW_MAXE; e++) {
            int c = threadIdx.x + e * T;
            float d = xv[e] - mu;
            if (c < D) q += d * d;
        }
        rs = rsqrtf(block_sum(q, sh) / (float)D + eps);
#pragma unroll
        for (int e = 0; e < ROW_MAXE; e++) {
            int c = threadIdx.x + e * T;
            if (c < D) {
                float y = (xv[e] - mu) * rs;
                if (w) y *= ld(w, c, dtw);
                if (b) y += ld(b, c, dtw);
                st(out, o + c, dto, y);
                if (shw) st(shw, o + c, 1, y);
            }
        }
    } else {
        float s = 0.f;
        for (ll c = threadIdx.x; c < D; c += T) s += ld(in, o + c, dti);
        mu = block_sum(s, sh) / (float)D;
        float q = 0.f;
        for (ll c = threadIdx.x; c < D; c += T) {
            float d = ld(in, o + c, dti) - mu;
            q += d * d;
        }
        rs = rsqrtf(block_sum(q, sh) / (float)D + eps);
        for (ll c = threadIdx.x; c < D; c += T) {
            float y = (ld(in, o + c, dti) - mu) * rs;
            if (w) y *= ld(w, c, dtw);
            if (b) y += ld(b, c, dtw);
            st(out, o + c, dto, y);
            if (shw) st(shw, o + c, 1, y);
        }
    }
    if (threadIdx.x == 0) {
        if (mean) st(mean, row, dts, mu);
        if (rstd) st(rstd, row, dts, rs);
    }
}

// ---- fp32 fast paths: 16-byte accesses, the row in registers (D % 4 == 0, D ≤ 4·VEC_MAXV·blockDim.x) ----
#define VEC_MAXV 4  // float4s per thread

// ln_row_f32x4: the row statistics prologue of the fp32 float4 LayerNorm forwards: the block's row
// (D4 float4s from in + o) into xv (zeros past the row), its mean mu and rstd rs = 1/√(var + eps).
__device__ __forceinline__ void ln_row_f32x4(f32x4 (&xv)[VEC_MAXV], float &mu, float &rs, const f32x4 *in, ll o, int D4, int D,
                                             float eps, float *sh) {
    const int T = blockDim.x;
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < VEC_MAXV; e++) {
        int c = threadIdx.x + e * T;
        xv[e] = c < D4 ? in[o + c] : f32x4{0.f, 0.f, 0.f, 0.f};
        s += xv[e].x + xv[e].y + xv[e].z + xv[e].w;
    }
    mu = block_sum(s, sh) / (float)D;
    float q = 0.f;
#pragma unroll
    for (int e = 0; e < VEC_MAXV; e++) {
        int c = threadIdx.x + e * T;
        if (c < D4) {
            float a = xv[e].x - mu, b = xv[e].y - mu, cc = xv[e].z - mu, d = xv[e].w - mu;
            q += a * a + b * b + cc * cc + d * d;
        }
    }
    rs = rsqrtf(block_sum(q, sh) / (float)D + eps);
}

// ln_fwd for fp32 rows: x, out fp32, 16-byte aligned; w, b fp32 or null; shw bf16 copy or null;
// out null: only the bf16 copy (a bf16 output tensor).
extern "C" __global__ void ln_fwd_f32x4(f32x4 *out, bf16x4 *shw, float *mean, float *rstd, const f32x4 *in,
                                        const f32x4 *w, const f32x4 *b, int D, float eps) {
    __shared__ float sh[32];
    const int T = blockDim.x, D4 = D / 4;
    const ll o = (ll)blockIdx.x * D4;
    f32x4 xv[VEC_MAXV];
    float mu, rs;
    ln_row_f32x4(xv, mu, rs, in, o, D4, D, eps, sh);
#pragma unroll
    for (int e = 0; e < VEC_MAXV; e++) {
        int c = threadIdx.x + e * T;
        if (c < D4) {
            f32x4 y = {(xv[e].x - mu) * rs, (xv[e].y - mu) * rs, (xv[e].z - mu) * rs, (xv[e].w - mu) * rs};
            if (w) {
                f32x4 g = w[c];
                y.x *= g.x; y.y *= g.y; y.z *= g.z; y.w *= g.w;
            }
            if (b) {
                f32x4 h = b[c];
                y.x += h.x; y.y += h.y; y.z += h.z; y.w += h.w;
            }
            if (out) out[o + c] = y;
            if (shw) shw[o + c] = bf16x4{f2bf(y.x), f2bf(y.y), f2bf(y.z), f2bf(y.w)};
        }
    }
    if (threadIdx.x == 0) {
        if (mean) mean[blockIdx.x] = mu;
        if (rstd) rstd[blockIdx.x] = rs;
    }
}

// ln_fwd_f32x4 (no affine) and Modulate in one pass: ln = x̂ (null: not kept, an inference pass),
// h = x̂·(1 + mod[b, f, iScale]) + mod[b, f, iShift] (row = b·N + n, frame f = n / tpf) into hout (fp32,
// or null) and hsh (its bf16 copy, or the bf16 output itself, or null). The same float operations
// as ln_fwd_f32x4 then mod_fwd_f32x4.
extern "C" __global__ void ln_mod_fwd_f32x4(f32x4 *ln, f32x4 *hout, bf16x4 *hsh, float *mean, float *rstd, const f32x4 *in,
                                            const float *mod, int iShift, int iScale, int N, int F, int K, int tpf, int D,
                                            float eps) {
    __shared__ float sh[32];
    const int T = blockDim.x, D4 = D / 4;
    const ll o = (ll)blockIdx.x * D4;
    const int bb = blockIdx.x / N, ff = (blockIdx.x % N) / tpf;
    const f32x4 *m = (const f32x4 *)(mod + (ll)(bb * F + ff) * K * D);
    f32x4 xv[VEC_MAXV];
    float mu, rs;
    ln_row_f32x4(xv, mu, rs, in, o, D4, D, eps, sh);
#pragma unroll
    for (int e = 0; e < VEC_MAXV; e++) {
        int c = threadIdx.x + e * T;
        if (c < D4) {
            f32x4 y = {(xv[e].x - mu) * rs, (xv[e].y - mu) * rs, (xv[e].z - mu) * rs, (xv[e].w - mu) * rs};
            if (ln) ln[o + c] = y;
            f32x4 sc = m[iScale * D4 + c], sf = m[iShift * D4 + c];
            f32x4 h = {y.x * (1.f + sc.x) + sf.x, y.y * (1.f + sc.y) + sf.y, y.z * (1.f + sc.z) + sf.z, y.w * (1.f + sc.w) + sf.w};
            if (hout) hout[o + c] = h;
            if (hsh) hsh[o + c] = bf16x4{f2bf(h.x), f2bf(h.y), f2bf(h.z), f2bf(h.w)};
        }
    }
    if (threadIdx.x == 0) {
        if (mean) mean[blockIdx.x] = mu;
        if (rstd) rstd[blockIdx.x] = rs;
    }
}

// dIn += rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), ĝ = dOut·w, x̂ = (x − μ)·rstd.
extern "C" __global__ void ln_bwd(void *dIn, int dtdi, const void *dOut, int dtdo, const void *in, int dti,
                                  const void *mean, const void *rstd, int dts, const void *w, int dtw, ll D) {
    __shared__ float sh[32];
    ll row = blockIdx.x;
    const ll o = row * D;
    float mu = ld(mean, row, dts), rs = ld(rstd, row, dts);
    float s1 = 0.f, s2 = 0.f;
    for (ll c = threadIdx.x; c < D; c += blockDim.x) {
        float g = ld(dOut, o + c, dtdo);
        if (w) g *= ld(w, c, dtw);
        float xh = (ld(in, o + c, dti) - mu) * rs;
        s1 += g;
        s2 += g * xh;
    }
    float m1 = block_sum(s1, sh) / (float)D;
    float m2 = block_sum(s2, sh) / (float)D;
    for (ll c = threadIdx.x; c < D; c += blockDim.x) {
        float g = ld(dOut, o + c, dtdo);
        if (w) g *= ld(w, c, dtw);
        float xh = (ld(in, o + c, dti) - mu) * rs;
        st(dIn, o + c, dtdi, ld(dIn, o + c, dtdi) + rs * (g - m1 - xh * m2));
    }
}


// ln_flush_sums: a thread's column sums (sa into accXh, sb into acc1; either may be null) added at
// offset off, then zeroed.
__device__ __forceinline__ void ln_flush_sums(f32x4 (&sa)[VEC_MAXV], f32x4 (&sb)[VEC_MAXV], float *accXh, float *acc1, ll off,
                                              int D4) {
#pragma unroll
    for (int e = 0; e < VEC_MAXV; e++) {
        int c = threadIdx.x + e * blockDim.x;
        if (c < D4) {
            if (accXh) red_add4(accXh + off + 4 * c, sa[e]);
            if (acc1) red_add4(acc1 + off + 4 * c, sb[e]);
        }
        sa[e] = sb[e] = f32x4{0.f, 0.f, 0.f, 0.f};
    }
}

// ln_bwd for fp32 rows in registers (D % 4 == 0, D ≤ 4·VEC_MAXV·blockDim.x): dX += rs·(g − mean(g) −
// x̂·mean(g·x̂)), x̂ = (x − μ)·rs, g = dOut·w (w may be null), or, with mod (ModulateBack folded in:
// dOut is the gradient of the modulated norm x̂·(1 + scale) + shift, row = b·N + n of frame
// f = n / tpf), g = dOut·(1 + mod[b, f, iScale]). Each of dOut, x read once.
// SUMS (ln_bwd_sums_f32x4): the block takes rows [blockIdx.x·rowsPerBlock, + rowsPerBlock) and also
// sums the columns of the same reads: accXh[seg·accStride + c] += Σ dOut·x̂ (LayerNorm's weight
// gradient, Modulate's scale gradient) and acc1[seg·accStride + c] += Σ dOut (the bias, the shift),
// seg = row / segRows (one segment a frame for the modulation, one in all for LayerNorm), and of what
// it writes, dB[c] += Σ dX over all rows (the bias gradient of the Linear that reads dX as its dOut
// next) with dX's bf16 copy into shb (that Linear's GEMM operand); each thread sums its own columns
// in registers, added atomically when the segment or the block's rows end; any of them may be null.
template <bool SUMS>
__device__ __forceinline__ void ln_bwd_f32x4_t(f32x4 *dX, const f32x4 *dOut, const f32x4 *in, const float *mean,
                                               const float *rstd, const f32x4 *w, const float *mod, int iScale, int N,
                                               int F, int K, int tpf, int D, float *accXh, float *acc1, ll accStride,
                                               int segRows, float *dB, bf16x4 *shb, int rows,
                                               int rowsPerBlock) {
    __shared__ float sh[32];
    const int T = blockDim.x, D4 = D / 4;
    int r0 = blockIdx.x, r1 = r0 + 1;
    if (SUMS) {
        r0 = blockIdx.x * rowsPerBlock;
        r1 = r0 + rowsPerBlock;
        if (r1 > rows) r1 = rows;
    }
    f32x4 sa[VEC_MAXV], sb[VEC_MAXV];  // SUMS: this thread's columns' Σ dOut·x̂, Σ dOut in the segment
    f32x4 sx[VEC_MAXV];                 // SUMS: and Σ dX over the block's rows
    int seg = SUMS ? r0 / segRows : 0;
    if (SUMS) {
#pragma unroll
        for (int e = 0; e < VEC_MAXV; e++) sa[e] = sb[e] = sx[e] = f32x4{0.f, 0.f, 0.f, 0.f};
    }
    for (int row = r0; row < r1; row++) {
        if (SUMS && row / segRows != seg) {
            ln_flush_sums(sa, sb, accXh, acc1, seg * accStride, D4);
            seg = row / segRows;
        }
        const ll o = (ll)row * D4;
        const float mu = mean[row], rs = rstd[row];
        const f32x4 *sc = nullptr;
        if (mod) {
            const int b = row / N, f = (row % N) / tpf;
            sc = (const f32x4 *)(mod + ((ll)(b * F + f) * K + iScale) * D);
        }
        f32x4 gv[VEC_MAXV], xv[VEC_MAXV];
        float s1 = 0.f, s2 = 0.f;
#pragma unroll
        for (int e = 0; e < VEC_MAXV; e++) {
            int c = threadIdx.x + e * T;
            gv[e] = f32x4{0.f, 0.f, 0.f, 0.f};
            xv[e] = f32x4{0.f, 0.f, 0.f, 0.f};
            if (c < D4) {
                f32x4 g = dOut[o + c], x = in[o + c];
                f32x4 xh = {(x.x - mu) * rs, (x.y - mu) * rs, (x.z - mu) * rs, (x.w - mu) * rs};
                if (SUMS) {
                    sa[e].x += g.x * xh.x; sa[e].y += g.y * xh.y; sa[e].z += g.z * xh.z; sa[e].w += g.w * xh.w;
                    sb[e].x += g.x; sb[e].y += g.y; sb[e].z += g.z; sb[e].w += g.w;
                }
                if (w) {
                    f32x4 a = w[c];
                    g.x *= a.x; g.y *= a.y; g.z *= a.z; g.w *= a.w;
                }
                if (sc) {
                    f32x4 a = sc[c];
                    g.x *= 1.f + a.x; g.y *= 1.f + a.y; g.z *= 1.f + a.z; g.w *= 1.f + a.w;
                }
                s1 += g.x + g.y + g.z + g.w;
                s2 += g.x * xh.x + g.y * xh.y + g.z * xh.z + g.w * xh.w;
                gv[e] = g;
                xv[e] = xh;
            }
        }
        const float m1 = block_sum(s1, sh) / (float)D;
        const float m2 = block_sum(s2, sh) / (float)D;
#pragma unroll
        for (int e = 0; e < VEC_MAXV; e++) {
            int c = threadIdx.x + e * T;
            if (c < D4) {
                f32x4 d = dX[o + c], g = gv[e], xh = xv[e];
                d.x += rs * (g.x - m1 - xh.x * m2);
                d.y += rs * (g.y - m1 - xh.y * m2);
                d.z += rs * (g.z - m1 - xh.z * m2);
                d.w += rs * (g.w - m1 - xh.w * m2);
                dX[o + c] = d;
                if (SUMS) {
                    if (shb) shb[o + c] = bf16x4{f2bf(d.x), f2bf(d.y), f2bf(d.z), f2bf(d.w)};
                    sx[e].x += d.x; sx[e].y += d.y; sx[e].z += d.z; sx[e].w += d.w;
                }
            }
        }
    }
    if (SUMS && r0 < r1) {
        ln_flush_sums(sa, sb, accXh, acc1, seg * accStride, D4);
        if (dB) {
#pragma unroll
            for (int e = 0; e < VEC_MAXV; e++) {
                int c = threadIdx.x + e * T;
                if (c < D4) red_add4(dB + 4 * c, sx[e]);
            }
        }
    }
}

extern "C" __global__ void ln_bwd_f32x4(f32x4 *dX, const f32x4 *dOut, const f32x4 *in, const float *mean, const float *rstd,
                                        const f32x4 *w, const float *mod, int iScale, int N, int F, int K, int tpf, int D) {
    ln_bwd_f32x4_t<false>(dX, dOut, in, mean, rstd, w, mod, iScale, N, F, K, tpf, D, nullptr, nullptr, 0, 1, nullptr, nullptr, 0, 1);
}

extern "C" __global__ void ln_bwd_sums_f32x4(f32x4 *dX, const f32x4 *dOut, const f32x4 *in, const float *mean,
                                             const float *rstd, const f32x4 *w, const float *mod, int iScale, int N, int F,
                                             int K, int tpf, int D, float *accXh, float *acc1, ll accStride, int segRows,
                                             float *dB, bf16x4 *shb, int rows, int rowsPerBlock) {
    ln_bwd_f32x4_t<true>(dX, dOut, in, mean, rstd, w, mod, iScale, N, F, K, tpf, D, accXh, acc1, accStride, segRows, dB, shb,
                         rows, rowsPerBlock);
}
