// Tuning candidates of kernels/cuda/attention.cu, kept out of the shipped kernels (llm.c's dev/
// folder style): built by scripts/attn_bench/build.sh into attention_variants.sm90a.cubin and timed
// by attn_bench.py against the shipped ones (kernels/cuda/ATTENTION_NOTES.md has the runs).
// It includes the shipped source, so every candidate shares its bodies, macros and helpers.
#include "attention.cu"

// FA2-class (mma.sync) forwards at other launch shapes (FWD: head dim, warps, m-tiles per warp,
// keys per tile).
FWD(128, 4, 2, 64, bf16_t, attn_fwdv_hd128_w4m2b64)
FWD(128, 4, 2, 32, bf16_t, attn_fwdv_hd128_w4m2b32)
FWD(128, 8, 1, 128, bf16_t, attn_fwdv_hd128_w8m1b128)
FWD(64, 8, 1, 64, bf16_t, attn_fwdv_hd64_w8m1b64)
FWD(64, 8, 2, 32, bf16_t, attn_fwdv_hd64_w8m2b32)

// ---------------------------------------------------------------------------------------------
// Hopper forward (sm_90a): wgmma. Block: 2 warpgroups × 64 query rows (BR 128), 128-key tiles, K/V
// double-buffered by cp.async into the no-swizzle "core matrix" layout the wgmma descriptors read
// (8 rows × 16 bytes contiguous; a tile of R rows keeps each 16-byte column chunk c of all its rows
// together: byte offset c·R·16 + r·16). S = Q·Kᵀ with Q and K from shared memory; P stays in
// registers as the A operand of O += P·V, V read MN-major (transposed) from shared memory.
// SWK/SWV swap the two byte offsets of the K-major / MN-major descriptors (tuning builds check which
// reading of the layout is right; the shipped kernel fixes them).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ u64 gdesc(const void *p, u32 lbo, u32 sbo) {  // no swizzle, base offset 0
    return (u64)((smem_u32(p) & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32);
}

// load_tile_cm: rows [0, NROWS) × HD of bf16 (global row stride ldg) into the core-matrix layout;
// rows at or past `valid` become zeros.
template <int HD, int NROWS, int NT>
__device__ __forceinline__ void load_tile_cm(bf16_t *s, const bf16_t *g, ll ldg, int valid, int tid) {
    constexpr int CPR = HD / 8, TOTAL = NROWS * CPR;
#pragma unroll
    for (int it = 0; it < (TOTAL + NT - 1) / NT; ++it) {
        int c = it * NT + tid;
        if (TOTAL % NT == 0 || c < TOTAL) {
            int r = c / CPR, ch = c % CPR;
            bool ok = r < valid;
            cp_async16(s + ch * NROWS * 8 + r * 8, ok ? g + r * ldg + ch * 8 : g, ok ? 16 : 0);
        }
    }
}

template <bool SWK, bool SWV>
__device__ __forceinline__ void attn_fwd_wgmma_body(const bf16_t *__restrict__ q, const bf16_t *__restrict__ k,
                                                    const bf16_t *__restrict__ v, bf16_t *__restrict__ out,
                                                    float *__restrict__ lse, int Nq, int Nk, int H, int ct, int qoff,
                                                    float scale) {
#ifdef ATTN_WGMMA
    constexpr int HD = 128, BR = 128, BC = 128, NT = 256;
    extern __shared__ U4 smem_u4[];
    bf16_t *sQ = (bf16_t *)smem_u4;  // [HD/8][BR][8]
    bf16_t *sK = sQ + BR * HD;       // [2][HD/8][BC][8]
    bf16_t *sV = sK + 2 * BC * HD;   // [2][HD/8][BC][8]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int wg = warp >> 2;  // warpgroup: query rows 64wg..64wg+63; warp w%4 of it: 16 of those
    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int i0 = qt * BR;
    const ll ldg = (ll)H * HD;
    const bf16_t *qg = q + ((ll)b * Nq + i0) * ldg + (ll)h * HD;
    const bf16_t *kg = k + (ll)b * Nk * ldg + (ll)h * HD;
    const bf16_t *vg = v + (ll)b * Nk * ldg + (ll)h * HD;

    int kend = Nk, kfull = Nk;
    if (ct > 0) {
        int ilast = imin(i0 + BR, Nq) - 1;
        kend = imin(Nk, ((qoff + ilast) / ct + 1) * ct);
        kfull = imin(Nk, ((qoff + i0) / ct + 1) * ct);
    }
    const int nkt = (kend + BC - 1) / BC;

    load_tile_cm<HD, BR, NT>(sQ, qg, ldg, Nq - i0, tid);
    load_tile_cm<HD, BC, NT>(sK, kg, ldg, Nk, tid);
    load_tile_cm<HD, BC, NT>(sV, vg, ldg, Nk, tid);
    cp_commit();

    // K-major descriptors (Q, K): K-direction core matrices R·16 bytes apart, M/N-direction 128.
    constexpr u32 QL = SWK ? 128 : BR * 16, QS = SWK ? BR * 16 : 128;
    constexpr u32 KL = SWK ? 128 : BC * 16, KS = SWK ? BC * 16 : 128;
    // MN-major descriptor (V): K-direction (keys) core matrices 128 bytes apart, N-direction (hd) BC·16.
    constexpr u32 VL = SWV ? BC * 16 : 128, VS = SWV ? 128 : BC * 16;

    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = neg_inf(), m1 = neg_inf(), l0 = 0.f, l1 = 0.f;
    const float sl2 = scale * LOG2E;
    const int r0 = i0 + warp * 16 + g;  // rows of c0,c1 (r0) and c2,c3 (r0+8)
    const int ch0 = ct > 0 ? (qoff + r0) / ct : 0, ch1 = ct > 0 ? (qoff + r0 + 8) / ct : 0;

    for (int t = 0; t < nkt; ++t) {
        const int j0 = t * BC, st = t & 1;
        if (t + 1 < nkt) {
            load_tile_cm<HD, BC, NT>(sK + (st ^ 1) * BC * HD, kg + (ll)(j0 + BC) * ldg, ldg, Nk - j0 - BC, tid);
            load_tile_cm<HD, BC, NT>(sV + (st ^ 1) * BC * HD, vg + (ll)(j0 + BC) * ldg, ldg, Nk - j0 - BC, tid);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads through the async one
        __syncthreads();
        const bf16_t *sKs = sK + st * BC * HD, *sVs = sV + st * BC * HD;

        float s[BC / 8][4];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk)
            wgmma_ss<0>(s, gdesc(sQ + kk * 2 * BR * 8 + wg * 64 * 8, QL, QS), gdesc(sKs + kk * 2 * BC * 8, KL, KS), kk > 0);
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(s);

        if (j0 + BC > kfull) {
#pragma unroll
            for (int n = 0; n < BC / 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    int j = j0 + n * 8 + 2 * tq + e;
                    int cj = ct > 0 ? j / ct : 0;
                    if (j >= Nk || cj > ch0) s[n][e] = neg_inf();
                    if (j >= Nk || cj > ch1) s[n][2 + e] = neg_inf();
                }
        }
        float mx0 = neg_inf(), mx1 = neg_inf();
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
            mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
            mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
        }
        mx0 = fmaxf(mx0, shfl_xor(mx0, 1));
        mx0 = fmaxf(mx0, shfl_xor(mx0, 2));
        mx1 = fmaxf(mx1, shfl_xor(mx1, 1));
        mx1 = fmaxf(mx1, shfl_xor(mx1, 2));
        const float mn0 = fmaxf(m0, mx0 * sl2), mn1 = fmaxf(m1, mx1 * sl2);
        const float ms0 = mn0 == neg_inf() ? 0.f : mn0, ms1 = mn1 == neg_inf() ? 0.f : mn1;
        const float c0 = ex2(m0 - ms0), c1 = ex2(m1 - ms1);
        m0 = mn0;
        m1 = mn1;
        float rs0 = 0.f, rs1 = 0.f;
        u32 pa[BC / 16][4];
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
            float p0 = ex2(fmaf(s[n][0], sl2, -ms0)), p1 = ex2(fmaf(s[n][1], sl2, -ms0));
            float p2 = ex2(fmaf(s[n][2], sl2, -ms1)), p3 = ex2(fmaf(s[n][3], sl2, -ms1));
            rs0 += p0 + p1;
            rs1 += p2 + p3;
            pa[n >> 1][(n & 1) * 2] = pack_bf16(p0, p1);
            pa[n >> 1][(n & 1) * 2 + 1] = pack_bf16(p2, p3);
        }
        l0 = l0 * c0 + rs0;
        l1 = l1 * c1 + rs1;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            o[n][0] *= c0;
            o[n][1] *= c0;
            o[n][2] *= c1;
            o[n][3] *= c1;
        }
        fence_regs(o);
        fence_regs(pa);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) wgmma_rs<1>(o, pa[kk], gdesc(sVs + kk * 2 * 8 * 8, VL, VS), 1);
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pa);
        __syncthreads();  // this stage is refilled next iteration
    }

    l0 += shfl_xor(l0, 1);
    l0 += shfl_xor(l0, 2);
    l1 += shfl_xor(l1, 1);
    l1 += shfl_xor(l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;
    bf16_t *og = out + ((ll)b * Nq + r0) * ldg + (ll)h * HD + 2 * tq;
    if (r0 < Nq) {
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) Elem<bf16_t>::st2(og + n * 8, o[n][0] * inv0, o[n][1] * inv0);
        if (tq == 0) lse[((ll)b * H + h) * Nq + r0] = (m0 + lg2(l0)) * LN2;
    }
    if (r0 + 8 < Nq) {
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) Elem<bf16_t>::st2(og + 8 * ldg + n * 8, o[n][2] * inv1, o[n][3] * inv1);
        if (tq == 0) lse[((ll)b * H + h) * Nq + r0 + 8] = (m1 + lg2(l1)) * LN2;
    }
#else
    asm volatile("trap;");  // sm_90a only: attention.go launches it on compute capability 9.0 alone
#endif
}
// Shared memory: Q 32 KB + K, V 2 × 2 × 32 KB = 160 KB.
#define FWDW(SWK, SWV, NAME)                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 1)                                                 \
        NAME(const bf16_t *q, const bf16_t *k, const bf16_t *v, bf16_t *out, float *lse, int Nq, int Nk, \
             int H, int ct, int qoff, float scale) {                                                     \
        attn_fwd_wgmma_body<SWK, SWV>(q, k, v, out, lse, Nq, Nk, H, ct, qoff, scale);                    \
    }
FWDW(false, false, attn_fwdw_hd128_serial)  // SWK = SWV = false is the right reading (v3: the others fail)

// Pipelined Hopper forward: as above, but P_{t−1}·V_{t−1} runs on the tensor cores while the
// softmax of tile t runs on the ALUs (FA3's intra-warpgroup overlap): per tile, issue S_t = Q·K_tᵀ,
// then O += P_{t−1}·V_{t−1}; wait for S_t only; exponentiate; wait for the P·V; rescale O; keep P_t
// in registers for the next tile. V_{t−1} stays in use while tile t+1 loads: three K/V stages
// (Q 32 KB + 3 × 64 KB = 224 KB of shared memory), one barrier per tile.
__device__ __forceinline__ void attn_fwd_wgmma_pipe_body(const bf16_t *__restrict__ q, const bf16_t *__restrict__ k,
                                                         const bf16_t *__restrict__ v, bf16_t *__restrict__ out,
                                                         float *__restrict__ lse, int Nq, int Nk, int H, int ct,
                                                         int qoff, float scale) {
#ifdef ATTN_WGMMA
    constexpr int HD = 128, BR = 128, BC = 128, NT = 256, NS = 3;
    extern __shared__ U4 smem_u4[];
    bf16_t *sQ = (bf16_t *)smem_u4;  // [HD/8][BR][8]
    bf16_t *sK = sQ + BR * HD;       // [NS][HD/8][BC][8]
    bf16_t *sV = sK + NS * BC * HD;  // [NS][HD/8][BC][8]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int wg = warp >> 2;
    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int i0 = qt * BR;
    const ll ldg = (ll)H * HD;
    const bf16_t *qg = q + ((ll)b * Nq + i0) * ldg + (ll)h * HD;
    const bf16_t *kg = k + (ll)b * Nk * ldg + (ll)h * HD;
    const bf16_t *vg = v + (ll)b * Nk * ldg + (ll)h * HD;

    int kend = Nk, kfull = Nk;
    if (ct > 0) {
        int ilast = imin(i0 + BR, Nq) - 1;
        kend = imin(Nk, ((qoff + ilast) / ct + 1) * ct);
        kfull = imin(Nk, ((qoff + i0) / ct + 1) * ct);
    }
    const int nkt = (kend + BC - 1) / BC;

    load_tile_cm<HD, BR, NT>(sQ, qg, ldg, Nq - i0, tid);
    load_tile_cm<HD, BC, NT>(sK, kg, ldg, Nk, tid);
    load_tile_cm<HD, BC, NT>(sV, vg, ldg, Nk, tid);
    cp_commit();

    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = neg_inf(), m1 = neg_inf(), l0 = 0.f, l1 = 0.f;
    const float sl2 = scale * LOG2E;
    const int r0 = i0 + warp * 16 + g;
    const int ch0 = ct > 0 ? (qoff + r0) / ct : 0, ch1 = ct > 0 ? (qoff + r0 + 8) / ct : 0;
    u32 pa[BC / 16][4];  // P of the previous tile, the A operand of its P·V

    for (int t = 0; t < nkt; ++t) {
        const int j0 = t * BC, st = t % NS, sp = (t + NS - 1) % NS;
        cp_wait<0>();  // tile t (the one outstanding group) has landed
        fence_proxy_async();
        __syncthreads();  // … for every thread; and iteration t−1 (its P·V of tile t−2) is done everywhere
        if (t + 1 < nkt) {
            const int sn = (t + 1) % NS;
            load_tile_cm<HD, BC, NT>(sK + sn * BC * HD, kg + (ll)(j0 + BC) * ldg, ldg, Nk - j0 - BC, tid);
            load_tile_cm<HD, BC, NT>(sV + sn * BC * HD, vg + (ll)(j0 + BC) * ldg, ldg, Nk - j0 - BC, tid);
            cp_commit();
        }
        const bf16_t *sKs = sK + st * BC * HD;

        float s[BC / 8][4];
        fence_regs(o);
        fence_regs(pa);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk)
            wgmma_ss<0>(s, gdesc(sQ + kk * 2 * BR * 8 + wg * 64 * 8, BR * 16, 128), gdesc(sKs + kk * 2 * BC * 8, BC * 16, 128), kk > 0);
        wgmma_commit();
        if (t > 0) {
            const bf16_t *sVp = sV + sp * BC * HD;
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) wgmma_rs<1>(o, pa[kk], gdesc(sVp + kk * 2 * 8 * 8, 128, BC * 16), 1);
            wgmma_commit();
            wgmma_wait<1>();  // S_t done; P_{t−1}·V_{t−1} may still run
        } else {
            wgmma_wait<0>();
        }
        fence_regs(s);

        if (j0 + BC > kfull) {
#pragma unroll
            for (int n = 0; n < BC / 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    int j = j0 + n * 8 + 2 * tq + e;
                    int cj = ct > 0 ? j / ct : 0;
                    if (j >= Nk || cj > ch0) s[n][e] = neg_inf();
                    if (j >= Nk || cj > ch1) s[n][2 + e] = neg_inf();
                }
        }
        float mx0 = neg_inf(), mx1 = neg_inf();
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
            mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
            mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
        }
        mx0 = fmaxf(mx0, shfl_xor(mx0, 1));
        mx0 = fmaxf(mx0, shfl_xor(mx0, 2));
        mx1 = fmaxf(mx1, shfl_xor(mx1, 1));
        mx1 = fmaxf(mx1, shfl_xor(mx1, 2));
        const float mn0 = fmaxf(m0, mx0 * sl2), mn1 = fmaxf(m1, mx1 * sl2);
        const float ms0 = mn0 == neg_inf() ? 0.f : mn0, ms1 = mn1 == neg_inf() ? 0.f : mn1;
        const float c0 = ex2(m0 - ms0), c1 = ex2(m1 - ms1);
        m0 = mn0;
        m1 = mn1;
        float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
            s[n][0] = ex2(fmaf(s[n][0], sl2, -ms0));
            s[n][1] = ex2(fmaf(s[n][1], sl2, -ms0));
            s[n][2] = ex2(fmaf(s[n][2], sl2, -ms1));
            s[n][3] = ex2(fmaf(s[n][3], sl2, -ms1));
            rs0 += s[n][0] + s[n][1];
            rs1 += s[n][2] + s[n][3];
        }
        l0 = l0 * c0 + rs0;
        l1 = l1 * c1 + rs1;
        if (t > 0) wgmma_wait<0>();  // P_{t−1}·V_{t−1} landed in o (and pa is free)
        fence_regs(o);
        fence_regs(pa);
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            o[n][0] *= c0;
            o[n][1] *= c0;
            o[n][2] *= c1;
            o[n][3] *= c1;
        }
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
            pa[n >> 1][(n & 1) * 2] = pack_bf16(s[n][0], s[n][1]);
            pa[n >> 1][(n & 1) * 2 + 1] = pack_bf16(s[n][2], s[n][3]);
        }
    }
    {  // the last tile's P·V
        const bf16_t *sVp = sV + ((nkt - 1) % NS) * BC * HD;
        fence_regs(o);
        fence_regs(pa);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) wgmma_rs<1>(o, pa[kk], gdesc(sVp + kk * 2 * 8 * 8, 128, BC * 16), 1);
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(o);
    }

    l0 += shfl_xor(l0, 1);
    l0 += shfl_xor(l0, 2);
    l1 += shfl_xor(l1, 1);
    l1 += shfl_xor(l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;
    bf16_t *og = out + ((ll)b * Nq + r0) * ldg + (ll)h * HD + 2 * tq;
    if (r0 < Nq) {
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) Elem<bf16_t>::st2(og + n * 8, o[n][0] * inv0, o[n][1] * inv0);
        if (tq == 0) lse[((ll)b * H + h) * Nq + r0] = (m0 + lg2(l0)) * LN2;
    }
    if (r0 + 8 < Nq) {
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) Elem<bf16_t>::st2(og + 8 * ldg + n * 8, o[n][2] * inv1, o[n][3] * inv1);
        if (tq == 0) lse[((ll)b * H + h) * Nq + r0 + 8] = (m1 + lg2(l1)) * LN2;
    }
#else
    asm volatile("trap;");
#endif
}
extern "C" __global__ void __launch_bounds__(256, 1)
    attn_fwdw_hd128_pipe(const bf16_t *q, const bf16_t *k, const bf16_t *v, bf16_t *out, float *lse, int Nq, int Nk,
                         int H, int ct, int qoff, float scale) {
    attn_fwd_wgmma_pipe_body(q, k, v, out, lse, Nq, Nk, H, ct, qoff, scale);
}

// FA3-style forward variants (FWD3: stages, ping-pong consumers, V descriptor reading).
FWD3(2, false, false, attn_fwd3v_ns2)     // no ping-pong
FWD3(3, true, false, attn_fwd3v_ns3pp)    // three stages
FWD3(2, true, true, attn_fwd3v_ns2pp_vswap)  // V descriptor's byte offsets swapped (the other reading)

// sm_90a backward variants (BWD3: gradient type, producer / consumer setmaxnreg, opaque descriptors,
// MODE: what is live at once, see attn_bwd_sm90_body; ROT: rotated query order). The candidates of v8
// (MODE 4, 5, 6, ROT) are in bwd3_variants.cu, one build each.
BWD3(float, 24, 240, true, 0, false, 0, attn_bwd3v_m0)   // Sᵀ and dPᵀ together, dQ under dV, dK (calls 1-3: C7512)
BWD3(float, 24, 240, true, 1, false, 0, attn_bwd3v_m1)   // Sᵀ, then dPᵀ with a bf16 Pᵀ (shipped in call 4 of v7; C7512)
BWD3(float, 40, 232, true, 1, false, 0, attn_bwd3v_m1r40) // MODE 1 at the forward's 40 / 232 split
