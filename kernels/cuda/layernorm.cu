// LayerNorm over the last dim D, with or without affine (Wan's norm1/norm2 have none, norm3 has both).
// One block per row; mean and rstd saved for the backward.
#include "common.cuh"

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

#define WARP_MAXE 64  // row elements per lane of the warp-per-row kernels: D ≤ 2048

// ln_fwd_warp: ln_fwd with one warp per row (rows of D ≤ 2048): no block barriers, the row in registers.
extern "C" __global__ void ln_fwd_warp(void *out, int dto, void *shw, void *mean, void *rstd, int dts, const void *in, int dti,
                                       const void *w, const void *b, int dtw, int D, float eps, ll rows) {
    ll row = (ll)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const ll o = row * D;
    float xv[WARP_MAXE];
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < WARP_MAXE; e++) {
        int c = lane + 32 * e;
        xv[e] = c < D ? ld(in, o + c, dti) : 0.f;
        s += xv[e];
    }
    float mu = warp_sum(s) / (float)D, q = 0.f;
#pragma unroll
    for (int e = 0; e < WARP_MAXE; e++) {
        int c = lane + 32 * e;
        float d = xv[e] - mu;
        if (c < D) q += d * d;
    }
    float rs = rsqrtf(warp_sum(q) / (float)D + eps);
#pragma unroll
    for (int e = 0; e < WARP_MAXE; e++) {
        int c = lane + 32 * e;
        if (c < D) {
            float y = (xv[e] - mu) * rs;
            if (w) y *= ld(w, c, dtw);
            if (b) y += ld(b, c, dtw);
            st(out, o + c, dto, y);
            if (shw) st(shw, o + c, 1, y);
        }
    }
    if (lane == 0) {
        if (mean) st(mean, row, dts, mu);
        if (rstd) st(rstd, row, dts, rs);
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
