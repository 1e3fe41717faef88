// RMSNorm over the last dim D (Wan's norm_q / norm_k run over all D channels, not per head).
#include "common.cuh"

// build-fallback: -DNO_RED_V4

#define ROW_MAXE 16  // row elements a thread keeps in registers (D ≤ 16·blockDim.x: one read of x)

// out = x·rsqrt(mean(x²) + eps)·w; rstd [rows] saved; shw, when not null, gets a bf16 copy of out.
extern "C" __global__ void rms_fwd(void *out, int dto, void *shw, void *rstd, int dts, const void *in, int dti,
                                   const void *w, int dtw, ll D, float eps) {
    __shared__ float sh[32];
    ll row = blockIdx.x;
    const ll o = row * D;
    const int T = blockDim.x;
    float rs;
    if (D <= (ll)ROW_MAXE * T) {
        float xv[ROW_MAXE];
        float q = 0.f;
#pragma unroll
        for (int e = 0; e < ROW_MAXE; e++) {
            int c = threadIdx.x + e * T;
            xv[e] = c < D ? ld(in, o + c, dti) : 0.f;
            q += xv[e] * xv[e];
        }
        rs = rsqrtf(block_sum(q, sh) / (float)D + eps);
#pragma unroll
        for (int e = 0; e < ROW_MAXE; e++) {
            int c = threadIdx.x + e * T;
            if (c < D) {
                float y = xv[e] * rs;
                if (w) y *= ld(w, c, dtw);
                st(out, o + c, dto, y);
                if (shw) st(shw, o + c, 1, y);
            }
        }
    } else {
        float q = 0.f;
        for (ll c = threadIdx.x; c < D; c += T) {
            float x = ld(in, o + c, dti);
            q += x * x;
        }
        rs = rsqrtf(block_sum(q, sh) / (float)D + eps);
        for (ll c = threadIdx.x; c < D; c += T) {
            float y = ld(in, o + c, dti) * rs;
            if (w) y *= ld(w, c, dtw);
            st(out, o + c, dto, y);
            if (shw) st(shw, o + c, 1, y);
        }
    }
    if (threadIdx.x == 0 && rstd) st(rstd, row, dts, rs);
}

// ---- fp32 fast paths: 16-byte accesses, the row in registers (D % 4 == 0, D ≤ 4·VEC_MAXV·blockDim.x) ----
#define VEC_MAXV 4  // float4s per thread

// rms_row_f32x4: the row prologue of the fp32 float4 RMSNorm forwards: the block's row (D4 float4s
// from in + o) into xv (zeros past the row); returns rstd = 1/√(mean(x²) + eps).
__device__ __forceinline__ float rms_row_f32x4(f32x4 (&xv)[VEC_MAXV], const f32x4 *in, ll o, int D4, int D, float eps, float *sh) {
    const int T = blockDim.x;
    float q = 0.f;
#pragma unroll
    for (int e = 0; e < VEC_MAXV; e++) {
        int c = threadIdx.x + e * T;
        xv[e] = c < D4 ? in[o + c] : f32x4{0.f, 0.f, 0.f, 0.f};
        q += xv[e].x * xv[e].x + xv[e].y * xv[e].y + xv[e].z * xv[e].z + xv[e].w * xv[e].w;
    }
    return rsqrtf(block_sum(q, sh) / (float)D + eps);
}

// rms_scale_f32x4: x·rs·w of one float4 of the row (w null: no weight).
__device__ __forceinline__ f32x4 rms_scale_f32x4(f32x4 x, float rs, const f32x4 *w, int c) {
    f32x4 y = {x.x * rs, x.y * rs, x.z * rs, x.w * rs};
    if (w) {
        f32x4 g = w[c];
        y.x *= g.x; y.y *= g.y; y.z *= g.z; y.w *= g.w;
    }
    return y;
}

// rms_fwd for fp32 rows (as ln_fwd_f32x4).
extern "C" __global__ void rms_fwd_f32x4(f32x4 *out, bf16x4 *shw, float *rstd, const f32x4 *in, const f32x4 *w, int D, float eps) {
    __shared__ float sh[32];
    const int T = blockDim.x, D4 = D / 4;
    const ll o = (ll)blockIdx.x * D4;
    f32x4 xv[VEC_MAXV];
    const float rs = rms_row_f32x4(xv, in, o, D4, D, eps, sh);
#pragma unroll
    for (int e = 0; e < VEC_MAXV; e++) {
        int c = threadIdx.x + e * T;
        if (c < D4) {
            f32x4 y = rms_scale_f32x4(xv[e], rs, w, c);
            out[o + c] = y;
            if (shw) shw[o + c] = bf16x4{f2bf(y.x), f2bf(y.y), f2bf(y.z), f2bf(y.w)};
        }
    }
    if (threadIdx.x == 0 && rstd) rstd[blockIdx.x] = rs;
}

// rms_fwd_f32x4 then the 3D RoPE of rope.cu on the row in registers (one pass instead of RMSNorm, RoPE
// and a bf16 conversion): row = b·N + t, token t of the [frames, rows, cols] grid at frame frame0 + f;
// the row's D = heads·hd channels rotate in pairs (2j, 2j+1) of each head (hd % 4 == 0: a float4 holds
// pairs j0, j0 + 1 of one head), cos/sin from rope_table's tf, th. out null: only the bf16 values
// (shw; a bf16 output tensor).
__device__ __forceinline__ void rope_pair(float &a, float &b, const float *tf, const float *th, int j, int nf, int nh,
                                          unsigned f, unsigned r, unsigned w, float sign = 1.f) {
    const float *e;
    if (j < nf) e = tf + 2 * (f * nf + j);
    else if (j < nf + nh) e = th + 2 * (r * nh + j - nf);
    else e = th + 2 * (w * nh + j - nf - nh);
    float co = e[0], sn = e[1] * sign;
    float y0 = a * co - b * sn, y1 = a * sn + b * co;
    a = y0;
    b = y1;
}
extern "C" __global__ void rms_rope_f32x4(f32x4 *out, bf16x4 *shw, float *rstd, const f32x4 *in, const f32x4 *w, int D,
                                          float eps, const float *tf, const float *th, int N, int hd, int rows, int cols,
                                          int frame0) {
    __shared__ float sh[32];
    const int T = blockDim.x, D4 = D / 4;
    const ll o = (ll)blockIdx.x * D4;
    f32x4 xv[VEC_MAXV];
    const float rs = rms_row_f32x4(xv, in, o, D4, D, eps, sh);
    const int nh = hd / 2 / 3, nf = hd / 2 - 2 * nh;
    const unsigned t = blockIdx.x % (unsigned)N, hw = (unsigned)rows * cols;
    const unsigned f = frame0 + t / hw, r = (t / cols) % rows, wc = t % cols;
#pragma unroll
    for (int e = 0; e < VEC_MAXV; e++) {
        int c = threadIdx.x + e * T;
        if (c < D4) {
            f32x4 y = rms_scale_f32x4(xv[e], rs, w, c);
            int j = ((4 * c) % hd) / 2;
            rope_pair(y.x, y.y, tf, th, j, nf, nh, f, r, wc);
            rope_pair(y.z, y.w, tf, th, j + 1, nf, nh, f, r, wc);
            if (out) out[o + c] = y;
            if (shw) shw[o + c] = bf16x4{f2bf(y.x), f2bf(y.y), f2bf(y.z), f2bf(y.w)};
        }
    }
    if (threadIdx.x == 0 && rstd) rstd[blockIdx.x] = rs;
}

// dIn += rstd·(g − x̂·mean(g·x̂)), g = dOut·w, x̂ = x·rstd.
extern "C" __global__ void rms_bwd(void *dIn, int dtdi, const void *dOut, int dtdo, const void *in, int dti,
                                   const void *rstd, int dts, const void *w, int dtw, ll D) {
    __shared__ float sh[32];
    ll row = blockIdx.x;
    const ll o = row * D;
    float rs = ld(rstd, row, dts);
    float s = 0.f;
    for (ll c = threadIdx.x; c < D; c += blockDim.x) {
        float g = ld(dOut, o + c, dtdo);
        if (w) g *= ld(w, c, dtw);
        s += g * ld(in, o + c, dti) * rs;
    }
    float m = block_sum(s, sh) / (float)D;
    for (ll c = threadIdx.x; c < D; c += blockDim.x) {
        float g = ld(dOut, o + c, dtdo);
        if (w) g *= ld(w, c, dtw);
        float xh = ld(in, o + c, dti) * rs;
        st(dIn, o + c, dtdi, ld(dIn, o + c, dtdi) + rs * (g - xh * m));
    }
}


// rms_bwd for fp32 rows in registers: dIn (+)= rs·(g − x̂·mean(g·x̂)), g = dOut·w, x̂ = x·rs; acc 0:
// dIn = (a zeroing folded in, kernels.LazyZeroer). With tf (RoPEBack folded in): dOut [B·N, D] is
// the gradient of the rotated output; it is first rotated back (sign −1, as rope_apply_tab) and
// stored back in place (the weight gradient's column reduction reads it), as RoPEBack leaves it.
// SUMS (rms_bwd_sums_f32x4): the block takes rows [blockIdx.x·rowsPerBlock, + rowsPerBlock) and
// also sums the columns of the same reads, dW[c] += Σ dOut·x̂ (the weight gradient, dOut rotated
// back), and of what it writes, dB[c] += Σ dIn (the bias gradient of the Linear whose output was
// normalized), with dIn's bf16 copy into shb (the operand of that Linear's backward GEMMs); each
// thread sums its own columns in registers, added atomically at the end; dW, dB, shb may be null.
template <bool SUMS>
__device__ __forceinline__ void rms_bwd_f32x4_t(f32x4 *dIn, f32x4 *dOut, const f32x4 *in, const float *rstd, const f32x4 *w,
                                                int D, int acc, const float *tf, const float *th, int N, int hd, int rows,
                                                int cols, int frame0, float *dW, float *dB, bf16x4 *shb, int nrows, int rowsPerBlock) {
    __shared__ float sh[32];
    const int T = blockDim.x, D4 = D / 4;
    int r0 = blockIdx.x, r1 = r0 + 1;
    if (SUMS) {
        r0 = blockIdx.x * rowsPerBlock;
        r1 = r0 + rowsPerBlock;
        if (r1 > nrows) r1 = nrows;
    }
    int nh = 0, nf = 0;
    if (tf) {
        nh = hd / 2 / 3;
        nf = hd / 2 - 2 * nh;
    }
    f32x4 sw[VEC_MAXV], sb[VEC_MAXV];  // SUMS: this thread's columns' Σ dOut·x̂, Σ dIn
    if (SUMS) {
#pragma unroll
        for (int e = 0; e < VEC_MAXV; e++) sw[e] = sb[e] = f32x4{0.f, 0.f, 0.f, 0.f};
    }
    for (int row = r0; row < r1; row++) {
        const ll o = (ll)row * D4;
        const float rs = rstd[row];
        unsigned f = 0, r = 0, wc = 0;
        if (tf) {
            const unsigned t = row % (unsigned)N, hw = (unsigned)rows * cols;
            f = frame0 + t / hw;
            r = (t / cols) % rows;
            wc = t % cols;
        }
        f32x4 gv[VEC_MAXV], xv[VEC_MAXV];
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < VEC_MAXV; e++) {
            int c = threadIdx.x + e * T;
            gv[e] = f32x4{0.f, 0.f, 0.f, 0.f};
            xv[e] = f32x4{0.f, 0.f, 0.f, 0.f};
            if (c < D4) {
                f32x4 g = dOut[o + c], x = in[o + c];
                if (tf) {
                    int j = ((4 * c) % hd) / 2;
                    rope_pair(g.x, g.y, tf, th, j, nf, nh, f, r, wc, -1.f);
                    rope_pair(g.z, g.w, tf, th, j + 1, nf, nh, f, r, wc, -1.f);
                    dOut[o + c] = g;
                }
                f32x4 xh = {x.x * rs, x.y * rs, x.z * rs, x.w * rs};
                if (SUMS) {
                    sw[e].x += g.x * xh.x; sw[e].y += g.y * xh.y; sw[e].z += g.z * xh.z; sw[e].w += g.w * xh.w;
                }
                if (w) {
                    f32x4 a = w[c];
                    g.x *= a.x; g.y *= a.y; g.z *= a.z; g.w *= a.w;
                }
                s += g.x * xh.x + g.y * xh.y + g.z * xh.z + g.w * xh.w;
                gv[e] = g;
                xv[e] = xh;
            }
        }
        const float m = block_sum(s, sh) / (float)D;
#pragma unroll
        for (int e = 0; e < VEC_MAXV; e++) {
            int c = threadIdx.x + e * T;
            if (c < D4) {
                f32x4 d = acc ? dIn[o + c] : f32x4{0.f, 0.f, 0.f, 0.f}, g = gv[e], xh = xv[e];
                d.x += rs * (g.x - xh.x * m);
                d.y += rs * (g.y - xh.y * m);
                d.z += rs * (g.z - xh.z * m);
                d.w += rs * (g.w - xh.w * m);
                dIn[o + c] = d;
                if (SUMS) {
                    if (shb) shb[o + c] = bf16x4{f2bf(d.x), f2bf(d.y), f2bf(d.z), f2bf(d.w)};
                    sb[e].x += d.x; sb[e].y += d.y; sb[e].z += d.z; sb[e].w += d.w;
                }
            }
        }
    }
    if (SUMS && r0 < r1) {
#pragma unroll
        for (int e = 0; e < VEC_MAXV; e++) {
            int c = threadIdx.x + e * T;
            if (c < D4) {
                if (dW) red_add4(dW + 4 * c, sw[e]);
                if (dB) red_add4(dB + 4 * c, sb[e]);
            }
        }
    }
}

extern "C" __global__ void rms_bwd_f32x4(f32x4 *dIn, f32x4 *dOut, const f32x4 *in, const float *rstd, const f32x4 *w, int D,
                                         int acc, const float *tf, const float *th, int N, int hd, int rows, int cols,
                                         int frame0) {
    rms_bwd_f32x4_t<false>(dIn, dOut, in, rstd, w, D, acc, tf, th, N, hd, rows, cols, frame0, nullptr, nullptr, nullptr, 0, 1);
}

extern "C" __global__ void rms_bwd_sums_f32x4(f32x4 *dIn, f32x4 *dOut, const f32x4 *in, const float *rstd, const f32x4 *w,
                                              int D, int acc, const float *tf, const float *th, int N, int hd, int rows,
                                              int cols, int frame0, float *dW, float *dB, bf16x4 *shb, int nrows, int rowsPerBlock) {
    rms_bwd_f32x4_t<true>(dIn, dOut, in, rstd, w, D, acc, tf, th, N, hd, rows, cols, frame0, dW, dB, shb, nrows, rowsPerBlock);
}
