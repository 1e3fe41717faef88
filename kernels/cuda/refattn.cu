// Reference attention (simple, exact, slow): one warp per query row (forward, dQ) or per key row
// (dK, dV), online softmax, LSE saved. It keeps the cuda Device complete and is the GPU check of the
// fused FlashAttention kernels (attention*.cu); it is not the fast path.
// q, out [B,Nq,H,hd]; k, v [B,Nk,H,hd]; lse [B,H,Nq]. head_dim ≤ 256, any size.
// Mask: ct == 0 → all keys; else key j is visible to query i iff j/ct ≤ (qOff+i)/ct.
#include "common.cuh"

#define MAXE 8  // elements per lane: head_dim ≤ 32·MAXE

__device__ __forceinline__ ll visible_end(ll i, ll Nk, ll ct, ll qOff) {  // keys [0, end) are visible
    if (ct == 0) return Nk;
    ll e = ((qOff + i) / ct + 1) * ct;
    return e < Nk ? e : Nk;
}

extern "C" __global__ void refattn_fwd(void *out, int dto, void *lse, int dtl, const void *q, const void *k,
                                       const void *v, int dt, int B, ll Nq, ll Nk, int H, int hd, ll ct, ll qOff) {
    ll row = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;  // (b, h, i)
    int lane = threadIdx.x & 31;
    if (row >= (ll)B * H * Nq) return;
    ll i = row % Nq, h = (row / Nq) % H, b = row / (Nq * H);
    float scale = rsqrtf((float)hd);
    float qr[MAXE], acc[MAXE];
    ll qo = ((b * Nq + i) * H + h) * hd;
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        int d = lane + 32 * e;
        qr[e] = d < hd ? ld(q, qo + d, dt) * scale : 0.f;
        acc[e] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    ll end = visible_end(i, Nk, ct, qOff);
    for (ll j = 0; j < end; j++) {
        ll ko = ((b * Nk + j) * H + h) * hd;
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < MAXE; e++) {
            int d = lane + 32 * e;
            if (d < hd) s += qr[e] * ld(k, ko + d, dt);
        }
        s = warp_sum(s);
        float mn = fmaxf(m, s);
        float corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
#pragma unroll
        for (int e = 0; e < MAXE; e++) {
            int d = lane + 32 * e;
            if (d < hd) acc[e] = acc[e] * corr + p * ld(v, ko + d, dt);
        }
        m = mn;
    }
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        int d = lane + 32 * e;
        if (d < hd) st(out, qo + d, dto, acc[e] / l);
    }
    if (lane == 0) st(lse, (b * H + h) * Nq + i, dtl, m + logf(l));
}

// delta[b,h,i] = Σ_d dOut·out (fp32 scratch)
extern "C" __global__ void refattn_delta(float *delta, const void *dOut, int dtdo, const void *out, int dto,
                                         int B, ll Nq, int H, int hd) {
    ll row = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= (ll)B * H * Nq) return;
    ll i = row % Nq, h = (row / Nq) % H, b = row / (Nq * H);
    ll o = ((b * Nq + i) * H + h) * hd;
    float s = 0.f;
    for (int d = lane; d < hd; d += 32) s += ld(dOut, o + d, dtdo) * ld(out, o + d, dto);
    s = warp_sum(s);
    if (lane == 0) delta[(b * H + h) * Nq + i] = s;
}

// dQ[i] += scale·Σ_j p_ij (dO_i·v_j − delta_i) k_j
extern "C" __global__ void refattn_dq(void *dq, int dtg, const void *dOut, int dtdo, const void *lse, int dtl,
                                      const float *delta, const void *q, const void *k, const void *v, int dt,
                                      int B, ll Nq, ll Nk, int H, int hd, ll ct, ll qOff) {
    ll row = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= (ll)B * H * Nq) return;
    ll i = row % Nq, h = (row / Nq) % H, b = row / (Nq * H);
    float scale = rsqrtf((float)hd);
    ll qo = ((b * Nq + i) * H + h) * hd;
    float qr[MAXE], dor[MAXE], acc[MAXE];
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        int d = lane + 32 * e;
        qr[e] = d < hd ? ld(q, qo + d, dt) * scale : 0.f;
        dor[e] = d < hd ? ld(dOut, qo + d, dtdo) : 0.f;
        acc[e] = 0.f;
    }
    ll li = (b * H + h) * Nq + i;
    float L = ld(lse, li, dtl), Dl = delta[li];
    ll end = visible_end(i, Nk, ct, qOff);
    for (ll j = 0; j < end; j++) {
        ll ko = ((b * Nk + j) * H + h) * hd;
        float s = 0.f, dp = 0.f;
#pragma unroll
        for (int e = 0; e < MAXE; e++) {
            int d = lane + 32 * e;
            if (d < hd) {
                s += qr[e] * ld(k, ko + d, dt);
                dp += dor[e] * ld(v, ko + d, dt);
            }
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        float ds = expf(s - L) * (dp - Dl) * scale;
#pragma unroll
        for (int e = 0; e < MAXE; e++) {
            int d = lane + 32 * e;
            if (d < hd) acc[e] += ds * ld(k, ko + d, dt);
        }
    }
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        int d = lane + 32 * e;
        if (d < hd) st(dq, qo + d, dtg, ld(dq, qo + d, dtg) + acc[e]);
    }
}

// dV[j] += Σ_i p_ij dO_i;  dK[j] += scale·Σ_i p_ij (dO_i·v_j − delta_i) q_i, over the queries that see j.
extern "C" __global__ void refattn_dkv(void *dk, void *dv, int dtg, const void *dOut, int dtdo, const void *lse, int dtl,
                                       const float *delta, const void *q, const void *k, const void *v, int dt,
                                       int B, ll Nq, ll Nk, int H, int hd, ll ct, ll qOff) {
    ll row = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;  // (b, h, j)
    int lane = threadIdx.x & 31;
    if (row >= (ll)B * H * Nk) return;
    ll j = row % Nk, h = (row / Nk) % H, b = row / (Nk * H);
    float scale = rsqrtf((float)hd);
    ll ko = ((b * Nk + j) * H + h) * hd;
    float kr[MAXE], vr[MAXE], ak[MAXE], av[MAXE];
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        int d = lane + 32 * e;
        kr[e] = d < hd ? ld(k, ko + d, dt) : 0.f;
        vr[e] = d < hd ? ld(v, ko + d, dt) : 0.f;
        ak[e] = 0.f;
        av[e] = 0.f;
    }
    ll i0 = 0;  // first query that sees key j: (qOff+i)/ct ≥ j/ct
    if (ct > 0) {
        i0 = (j / ct) * ct - qOff;
        if (i0 < 0) i0 = 0;
    }
    for (ll i = i0; i < Nq; i++) {
        ll qo = ((b * Nq + i) * H + h) * hd;
        float s = 0.f, dp = 0.f;
#pragma unroll
        for (int e = 0; e < MAXE; e++) {
            int d = lane + 32 * e;
            if (d < hd) {
                s += ld(q, qo + d, dt) * kr[e];
                dp += ld(dOut, qo + d, dtdo) * vr[e];
            }
        }
        s = warp_sum(s) * scale;
        dp = warp_sum(dp);
        ll li = (b * H + h) * Nq + i;
        float p = expf(s - ld(lse, li, dtl));
        float ds = p * (dp - delta[li]) * scale;
#pragma unroll
        for (int e = 0; e < MAXE; e++) {
            int d = lane + 32 * e;
            if (d < hd) {
                av[e] += p * ld(dOut, qo + d, dtdo);
                ak[e] += ds * ld(q, qo + d, dt);
            }
        }
    }
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        int d = lane + 32 * e;
        if (d < hd) {
            if (dk) st(dk, ko + d, dtg, ld(dk, ko + d, dtg) + ak[e]);
            if (dv) st(dv, ko + d, dtg, ld(dv, ko + d, dtg) + av[e]);
        }
    }
}
