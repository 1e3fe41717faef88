// RMSNorm over the last dim D (Wan's norm_q / norm_k run over all D channels, not per head).
#include "common.cuh"

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

#define WARP_MAXE 64  // row elements per lane of the warp-per-row kernels: D ≤ 2048

// rms_fwd_warp: rms_fwd with one warp per row (rows of D ≤ 2048).
extern "C" __global__ void rms_fwd_warp(void *out, int dto, void *shw, void *rstd, int dts, const void *in, int dti,
                                        const void *w, int dtw, int D, float eps, ll rows) {
    ll row = (ll)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const ll o = row * D;
    float xv[WARP_MAXE];
    float q = 0.f;
#pragma unroll
    for (int e = 0; e < WARP_MAXE; e++) {
        int c = lane + 32 * e;
        xv[e] = c < D ? ld(in, o + c, dti) : 0.f;
        q += xv[e] * xv[e];
    }
    float rs = rsqrtf(warp_sum(q) / (float)D + eps);
#pragma unroll
    for (int e = 0; e < WARP_MAXE; e++) {
        int c = lane + 32 * e;
        if (c < D) {
            float y = xv[e] * rs;
            if (w) y *= ld(w, c, dtw);
            st(out, o + c, dto, y);
            if (shw) st(shw, o + c, 1, y);
        }
    }
    if (lane == 0 && rstd) st(rstd, row, dts, rs);
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
