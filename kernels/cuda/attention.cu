// Fused attention, FlashAttention-2 style (Dao 2023), forward and backward.
//
//   out[b,i,h,:] = softmax_j(q[b,i,h,:]·k[b,j,h,:]·scale) · v[b,j,h,:]      over the visible keys j
//   q, out [B,Nq,H,hd]; k, v [B,Nk,H,hd]; lse [B,H,Nq] fp32, natural log.
//   Mask: ct (chunkTokens) == 0 → every key visible; else key j is visible to query i iff
//   j/ct <= (qoff+i)/ct (block-causal by chunk; qoff = the queries' absolute offset, a KV cache).
//   Backward ACCUMULATES (+=) into dQ, dK, dV; a null gradient pointer is skipped.
//
// Head dim 64 or 128, storage bf16 or fp32 (converted to bf16 on the way into shared memory); other
// head dims and fp16 go to refattn.cu (attention.go decides). Tensor cores through mma.sync m16n8k16
// (bf16 in, fp32 accumulate), ldmatrix, cp.async double buffering, online softmax in the log2 domain,
// fully masked key (or query) tiles skipped. Backward: one block per key tile, dK/dV in registers,
// dQ by fp32 atomics into an fp32 buffer (dQ itself when it is fp32), D = rowsum(dO∘O) from a prep
// kernel. Launch shapes and shared memory sizes are mirrored in attention.go.
#include "common.cuh"

// build-fallback: -DATTN_RED_V2=2
// build-fallback: -DATTN_RED_V2=0

typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// ---------------------------------------------------------------------------------------------
// PTX helpers
// ---------------------------------------------------------------------------------------------
struct alignas(16) U4 { u32 x, y, z, w; };
typedef f32x4 F4;
struct alignas(8) F2 { float x, y; };

#if defined(__clang__) && !defined(__NVCC__)  // the syntax check of common.cuh
extern "C" __device__ float fmaf(float, float, float);
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#endif
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ float neg_inf() {
    union { u32 u; float f; } c;
    c.u = 0xff800000u;
    return c.f;
}
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float lg2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {  // lo in the low half
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ u32 smem_u32(const void *p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ float shfl_xor(float v, int m) {
    float r;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(r) : "f"(v), "r"(m));
    return r;
}
// 16-byte global→shared copy; n = 0 zero-fills the destination without reading.
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int n) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async4(void *dst, const void *src, int n) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(u32 (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
// d += a·b for a 16×16 bf16 A (row), a 16×8 bf16 B (col), fp32 16×8 accumulators.
__device__ __forceinline__ void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void red_add(float *p, float v) {
    asm volatile("red.global.add.f32 [%0], %1;" ::"l"(p), "f"(v) : "memory");
}
__device__ __forceinline__ void red_add2(float *p, float a, float b) {
#ifndef ATTN_RED_V2
#define ATTN_RED_V2 1  // the build falls back to 2, then 0, should ptxas refuse a spelling
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && ATTN_RED_V2 == 1
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && ATTN_RED_V2 == 2
    asm volatile("red.global.v2.f32.add [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
    red_add(p, a);
    red_add(p + 1, b);
#endif
}
// bf16 gradients: (a, b) rounded to bf16 and added by one bf16x2 atomic (sm_90; the sm_90a backward's
// tail split alone uses it, attention.go attnBwdTail).
__device__ __forceinline__ void red_add2(bf16_t *p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.noftz.bf16x2 [%0], %1;" ::"l"(p), "r"(pack_bf16(a, b)) : "memory");
#else
    asm volatile("trap;");
#endif
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// D[64×128] (+)= A[64×16]·B[16×128], A and B by shared-memory descriptors; B K-major (TB 0) or
// MN-major (TB 1); acc = 0 overwrites D. d: this thread's accumulators, in the mma.sync C layout of
// its warp's 16 rows (d[n] = columns 8n..8n+7).
template <int TB>
__device__ __forceinline__ void wgmma_ss(float (&d)[16][4], u64 da, u64 db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, %67;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "l"(da), "l"(db), "r"(acc), "n"(TB));
}
// D[64×128] (+)= A[64×16]·B[16×128], A from registers (the mma.sync A layout of the warp's 16 rows).
template <int TB>
__device__ __forceinline__ void wgmma_rs(float (&d)[16][4], const u32 (&a)[4], u64 db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
}
#endif

// Storage types of the fast path.
template <typename T> struct Elem;
template <> struct Elem<bf16_t> {
    static __device__ __forceinline__ F2 ld2(const bf16_t *p) {
        u32 u = *(const u32 *)p;
        return F2{bf2f((unsigned short)(u & 0xffff)), bf2f((unsigned short)(u >> 16))};
    }
    static __device__ __forceinline__ void st2(bf16_t *p, float a, float b) { *(u32 *)p = pack_bf16(a, b); }
};
template <> struct Elem<float> {
    static __device__ __forceinline__ F2 ld2(const float *p) { return *(const F2 *)p; }
    static __device__ __forceinline__ void st2(float *p, float a, float b) { *(F2 *)p = F2{a, b}; }
};

// load_tile: rows [0, NROWS) of a HD-wide tile (global row stride ldg elements) into shared memory as
// bf16 with row stride LD; rows at or past `valid` become zeros. bf16 storage goes by cp.async (the
// caller commits and waits); fp32 is converted through registers.
template <int HD, int LD, int NROWS, int NT>
__device__ __forceinline__ void load_tile(bf16_t *s, const bf16_t *g, ll ldg, int valid, int tid) {
    constexpr int CPR = HD / 8, TOTAL = NROWS * CPR;
#pragma unroll
    for (int it = 0; it < (TOTAL + NT - 1) / NT; ++it) {
        int c = it * NT + tid;
        if (TOTAL % NT == 0 || c < TOTAL) {
            int r = c / CPR, ch = c % CPR;
            bool ok = r < valid;
            cp_async16(s + r * LD + ch * 8, ok ? g + r * ldg + ch * 8 : g, ok ? 16 : 0);
        }
    }
}
template <int HD, int LD, int NROWS, int NT>
__device__ __forceinline__ void load_tile(bf16_t *s, const float *g, ll ldg, int valid, int tid) {
    constexpr int CPR = HD / 8, TOTAL = NROWS * CPR;
#pragma unroll
    for (int it = 0; it < (TOTAL + NT - 1) / NT; ++it) {
        int c = it * NT + tid;
        if (TOTAL % NT == 0 || c < TOTAL) {
            int r = c / CPR, ch = c % CPR;
            U4 u = {0u, 0u, 0u, 0u};
            if (r < valid) {
                const F4 *src = (const F4 *)(g + r * ldg + ch * 8);
                F4 a = src[0], b = src[1];
                u.x = pack_bf16(a.x, a.y);
                u.y = pack_bf16(a.z, a.w);
                u.z = pack_bf16(b.x, b.y);
                u.w = pack_bf16(b.z, b.w);
            }
            *(U4 *)(s + r * LD + ch * 8) = u;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fast forward. Block: NW warps, each owning WM×16 query rows (BR = NW·WM·16 rows), key tiles of 64
// (BC), K/V double-buffered by cp.async. With WM = 1 a warp keeps its Q fragments in registers; with
// WM = 2 it reloads them from shared memory and each K/V fragment feeds two m-tiles (half the
// ldmatrix traffic per mma). Grid: (ceil(Nq/BR), H, B); query tiles run last-first so the heaviest
// causal tiles start first.
// ---------------------------------------------------------------------------------------------
template <int HD, int NW, int WM, int BC_> struct FwdCfg {
    static constexpr int BR = NW * WM * 16, BC = BC_, NT = NW * 32, LD = HD + 8;
    static constexpr int SMEM = (BR + 4 * BC) * LD * 2;
};

template <int HD, int NW, int WM, int BC_, typename T>
__device__ __forceinline__ void attn_fwd_body(const T *__restrict__ q, const T *__restrict__ k,
                                              const T *__restrict__ v, T *__restrict__ out,
                                              float *__restrict__ lse, int Nq, int Nk, int H, int ct, int qoff,
                                              float scale) {
    typedef FwdCfg<HD, NW, WM, BC_> C;
    constexpr int BR = C::BR, BC = C::BC, NT = C::NT, LD = C::LD;
    constexpr bool QREG = WM == 1;  // Q fragments held in registers
    extern __shared__ U4 smem_u4[];
    bf16_t *sQ = (bf16_t *)smem_u4;  // [BR][LD]
    bf16_t *sK = sQ + BR * LD;       // [2][BC][LD]
    bf16_t *sV = sK + 2 * BC * LD;   // [2][BC][LD]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int i0 = qt * BR;
    const ll ldg = (ll)H * HD;
    const T *qg = q + ((ll)b * Nq + i0) * ldg + (ll)h * HD;
    const T *kg = k + (ll)b * Nk * ldg + (ll)h * HD;
    const T *vg = v + (ll)b * Nk * ldg + (ll)h * HD;

    // Keys [0, kend) can be visible to some row of this tile; keys [0, kfull) to every row.
    int kend = Nk, kfull = Nk;
    if (ct > 0) {
        int ilast = imin(i0 + BR, Nq) - 1;
        kend = imin(Nk, ((qoff + ilast) / ct + 1) * ct);
        kfull = imin(Nk, ((qoff + i0) / ct + 1) * ct);
    }
    const int nkt = (kend + BC - 1) / BC;

    load_tile<HD, LD, BR, NT>(sQ, qg, ldg, Nq - i0, tid);
    load_tile<HD, LD, BC, NT>(sK, kg, ldg, Nk, tid);
    load_tile<HD, LD, BC, NT>(sV, vg, ldg, Nk, tid);
    cp_commit();
    cp_wait<0>();
    __syncthreads();

    const bf16_t *sQw = sQ + warp * WM * 16 * LD;  // this warp's rows
    u32 qf[QREG ? HD / 16 : 1][4];
    if (QREG) {
#pragma unroll
        for (int kk = 0; kk < (QREG ? HD / 16 : 0); ++kk) ldsm_x4(qf[kk], sQw + (lane & 15) * LD + kk * 16 + (lane >> 4) * 8);
    }

    float o[WM][HD / 8][4];
    float m[WM][2], l[WM][2];  // rows g and g+8 of each m-tile, log2 domain
    int chq[WM][2];            // chunk of each row
    const float sl2 = scale * LOG2E;
    const int r0 = i0 + warp * WM * 16 + g;  // row of o[0][·][0,1]; m-tile w adds 16w, c2,c3 add 8
#pragma unroll
    for (int w = 0; w < WM; ++w) {
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) o[w][n][0] = o[w][n][1] = o[w][n][2] = o[w][n][3] = 0.f;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            m[w][e] = neg_inf();
            l[w][e] = 0.f;
            chq[w][e] = ct > 0 ? (qoff + r0 + 16 * w + 8 * e) / ct : 0;
        }
    }

    for (int t = 0; t < nkt; ++t) {
        const int j0 = t * BC, st = t & 1;
        if (t + 1 < nkt) {
            load_tile<HD, LD, BC, NT>(sK + (st ^ 1) * BC * LD, kg + (ll)(j0 + BC) * ldg, ldg, Nk - j0 - BC, tid);
            load_tile<HD, LD, BC, NT>(sV + (st ^ 1) * BC * LD, vg + (ll)(j0 + BC) * ldg, ldg, Nk - j0 - BC, tid);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const bf16_t *sKs = sK + st * BC * LD, *sVs = sV + st * BC * LD;

        // S = Q Kᵀ: [WM·16 rows × BC keys] per warp
        float s[WM][BC / 8][4];
#pragma unroll
        for (int w = 0; w < WM; ++w)
#pragma unroll
            for (int n = 0; n < BC / 8; ++n) s[w][n][0] = s[w][n][1] = s[w][n][2] = s[w][n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            u32 qa[WM][4];
#pragma unroll
            for (int w = 0; w < WM; ++w) {
                if (QREG) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) qa[w][e] = qf[QREG ? kk : 0][e];
                } else {
                    ldsm_x4(qa[w], sQw + (w * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
                }
            }
#pragma unroll
            for (int p = 0; p < BC / 16; ++p) {
                u32 bb[4];
                ldsm_x4(bb, sKs + (p * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int w = 0; w < WM; ++w) {
                    mma(s[w][2 * p], qa[w], bb[0], bb[1]);
                    mma(s[w][2 * p + 1], qa[w], bb[2], bb[3]);
                }
            }
        }
        if (j0 + BC > kfull) {  // a key of this tile is hidden from some row (mask or past Nk)
#pragma unroll
            for (int n = 0; n < BC / 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    int j = j0 + n * 8 + 2 * tq + e;
                    int cj = ct > 0 ? j / ct : 0;
#pragma unroll
                    for (int w = 0; w < WM; ++w) {
                        if (j >= Nk || cj > chq[w][0]) s[w][n][e] = neg_inf();
                        if (j >= Nk || cj > chq[w][1]) s[w][n][2 + e] = neg_inf();
                    }
                }
        }
        // Online softmax, per row.
#pragma unroll
        for (int w = 0; w < WM; ++w) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float mx = neg_inf();
#pragma unroll
                for (int n = 0; n < BC / 8; ++n) mx = fmaxf(mx, fmaxf(s[w][n][2 * e], s[w][n][2 * e + 1]));
                mx = fmaxf(mx, shfl_xor(mx, 1));
                mx = fmaxf(mx, shfl_xor(mx, 2));
                const float mn = fmaxf(m[w][e], mx * sl2);
                const float ms = mn == neg_inf() ? 0.f : mn;
                const float c = ex2(m[w][e] - ms);
                m[w][e] = mn;
                float rs = 0.f;
#pragma unroll
                for (int n = 0; n < BC / 8; ++n) {
                    s[w][n][2 * e] = ex2(fmaf(s[w][n][2 * e], sl2, -ms));
                    s[w][n][2 * e + 1] = ex2(fmaf(s[w][n][2 * e + 1], sl2, -ms));
                    rs += s[w][n][2 * e] + s[w][n][2 * e + 1];
                }
                l[w][e] = l[w][e] * c + rs;
#pragma unroll
                for (int n = 0; n < HD / 8; ++n) {
                    o[w][n][2 * e] *= c;
                    o[w][n][2 * e + 1] *= c;
                }
            }
        }
        // O += P V
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            u32 a[WM][4];
#pragma unroll
            for (int w = 0; w < WM; ++w) {
                a[w][0] = pack_bf16(s[w][2 * kk][0], s[w][2 * kk][1]);
                a[w][1] = pack_bf16(s[w][2 * kk][2], s[w][2 * kk][3]);
                a[w][2] = pack_bf16(s[w][2 * kk + 1][0], s[w][2 * kk + 1][1]);
                a[w][3] = pack_bf16(s[w][2 * kk + 1][2], s[w][2 * kk + 1][3]);
            }
#pragma unroll
            for (int p = 0; p < HD / 16; ++p) {
                u32 bb[4];
                ldsm_x4_t(bb, sVs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + p * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int w = 0; w < WM; ++w) {
                    mma(o[w][2 * p], a[w], bb[0], bb[1]);
                    mma(o[w][2 * p + 1], a[w], bb[2], bb[3]);
                }
            }
        }
        __syncthreads();  // this stage is refilled next iteration
    }

#pragma unroll
    for (int w = 0; w < WM; ++w)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float lw = l[w][e];
            lw += shfl_xor(lw, 1);
            lw += shfl_xor(lw, 2);
            const int r = r0 + 16 * w + 8 * e;
            if (r >= Nq) continue;
            const float inv = 1.f / lw;
            T *og = out + ((ll)b * Nq + r) * ldg + (ll)h * HD + 2 * tq;
#pragma unroll
            for (int n = 0; n < HD / 8; ++n) Elem<T>::st2(og + n * 8, o[w][n][2 * e] * inv, o[w][n][2 * e + 1] * inv);
            if (tq == 0) lse[((ll)b * H + h) * Nq + r] = (m[w][e] + lg2(lw)) * LN2;
        }
}

// Launch configurations (attention.go mirrors them): NW warps × WM m-tiles per warp, BC-key tiles.
#define FWD(HD, NW, WM, BC, T, NAME)                                                                      \
    extern "C" __global__ void __launch_bounds__(NW * 32) NAME(const T *q, const T *k, const T *v, T *out, \
                                                               float *lse, int Nq, int Nk, int H, int ct,  \
                                                               int qoff, float scale) {                    \
        attn_fwd_body<HD, NW, WM, BC, T>(q, k, v, out, lse, Nq, Nk, H, ct, qoff, scale);                   \
    }
FWD(128, 8, 1, 64, bf16_t, attn_fwd_hd128_bf16)       // 128-row blocks: small grids, block-causal
FWD(128, 8, 2, 32, bf16_t, attn_fwd_hd128_bf16_r256)  // 256-row blocks: large grids (v3: 295 vs 268 TFLOP/s)
FWD(128, 8, 1, 64, float, attn_fwd_hd128_f32)
FWD(64, 4, 2, 64, bf16_t, attn_fwd_hd64_bf16)        // v5: 0.541 vs 0.626 ms (8 warps × 16 rows), H=24 N=4680
FWD(64, 8, 1, 64, float, attn_fwd_hd64_f32)

// ---------------------------------------------------------------------------------------------
// Hopper (sm_90a) helpers of the FA3-style forward below: wgmma fences, commits and waits. (The
// earlier wgmma forwards, serial and pipelined, and the other tuning candidates live in
// scripts/attn_bench/attention_variants.cu, which includes this file.)
// ---------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTN_WGMMA 1
#endif

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// Register fences (CUTLASS's warpgroup_fence_operand): wgmma reads and writes its register operands
// asynchronously, which the compiler cannot see; these pin each access to its side of the
// wgmma issue / wait statements.
template <int N, int M> __device__ __forceinline__ void fence_regs(float (&r)[N][M]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < M; ++j) asm volatile("" : "+f"(r[i][j])::"memory");
}
template <int N, int M> __device__ __forceinline__ void fence_regs(u32 (&r)[N][M]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < M; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// ---------------------------------------------------------------------------------------------
// Hopper forward, FA3-style (Shah et al. 2024), hd 128, bf16, sm_90a. Block: 3 warpgroups, 128
// query rows, 128-key tiles.
//   warpgroup 0, the producer (setmaxnreg 40): cp.async of Q once and of K_t, V_t into an NS-stage
//     ring, each stage's arrival signalled on an mbarrier (cp.async.mbarrier.arrive.noinc), each
//     stage refilled once the consumers have released it (mbarrier);
//   warpgroups 1, 2, the consumers (setmaxnreg 232): 64 query rows each. Per key tile t:
//     issue S_t = Q·K_tᵀ (SS wgmma) and O += P_{t−1}·V_{t−1} (RS wgmma, P in registers, V read
//     MN-major); wait for S_t only; mask, online softmax (exp2, scale folded) while the P·V runs;
//     wait for it; O *= exp2(m_old − m_new); P_t = bf16(S_t). The first tile is peeled off and the
//     last P·V comes after the loop, so that no path reads O between a P·V's issue and its wait
//     (ptxas serializes every wgmma otherwise: C7514, v4). PP: the two consumers take turns at
//     issuing their wgmmas (named barriers 1, 2), so one's softmax runs under the other's wgmmas.
// Shared memory: 128-byte swizzled tiles (the layout TMA's SWIZZLE_128B writes; Swizzle<3,4,3>):
// a tile of R rows × 128 columns is two R × 64 column blocks, R·128 bytes each; row r of a block is
// 128 bytes at r·128, its 16-byte chunk c at ((c ^ r%8) · 16). 1024-byte aligned. Descriptors:
// Q, K K-major (SBO 1024 = 8 rows; a 16-column k-step is +32 bytes inside the swizzle row, +R·128
// past column 64); V MN-major (LBO R·128 = the next 64 columns of hd, SBO 1024 = the next 8 keys).
// ---------------------------------------------------------------------------------------------
#ifdef ATTN_WGMMA
namespace fa3 {
constexpr int HD = 128, BR = 128, BC = 128;
constexpr int TILE = 128 * 128 * 2;  // bytes of one 128 × 128 bf16 tile

__device__ __forceinline__ u64 desc_sw128(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}
// One arrival on bar from the threads with pred != 0 (a predicated instruction, no branch).
__device__ __forceinline__ void mbar_arrive_if(u32 bar, int pred) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n@p mbarrier.arrive.shared.b64 _, [%0];\n}\n" ::"r"(bar),
                 "r"(pred)
                 : "memory");
}
// bar gets this thread's arrival once all of its earlier cp.async have landed.
__device__ __forceinline__ void cp_async_arrive(u32 bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void cp_async16s(u32 dst, const void *src, int n) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
template <int N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N)); }
__device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void bar_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory"); }

// Producer thread pt (0..127): a 128-row tile (global rows g, stride ldg elements; rows at or past
// `valid` zero-filled) into the swizzled tile at dst. Thread pt copies chunk pt%16 of rows
// pt/16 + 8i: its swizzled chunk is the same for all 16 of them.
__device__ __forceinline__ void load_tile_sw(u32 dst, const bf16_t *g, ll ldg, int valid, int pt) {
    const int r0 = pt >> 4, ch = pt & 15;
    u32 d = dst + (ch >> 3) * (128 * 128) + r0 * 128 + (((ch & 7) ^ r0) << 4);
    const bf16_t *s = g + r0 * ldg + ch * 8;
    const ll step = 8 * ldg;
    if (valid >= 128) {
#pragma unroll 4
        for (int i = 0; i < 16; ++i, d += 1024, s += step) cp_async16s(d, s, 16);
    } else {
#pragma unroll 4
        for (int i = 0; i < 16; ++i, d += 1024, s += step) {
            const bool ok = r0 + 8 * i < valid;
            cp_async16s(d, ok ? s : g, ok ? 16 : 0);
        }
    }
}

// The consumers' steps (per thread: accumulator rows r and r + 8 of its warp's 16; see wgmma_ss).
// S = Q·K_tᵀ into s, issued, not waited for; k-step kk of Q and K is kk%4·32 + kk/4·16384 bytes on.
__device__ __forceinline__ void issue_s(float (&s)[BC / 8][4], u64 dq, u64 dk) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        const u64 off = (u64)((((kk & 3) * 32) + (kk >> 2) * 16384) >> 4);
        wgmma_ss<0>(s, dq + off, dk + off, kk > 0);
    }
    wgmma_commit();
}
// O += P·V_t, issued; key step kk (16 keys) of V is kk·2048 bytes on.
__device__ __forceinline__ void issue_pv(float (&o)[HD / 8][4], const u32 (&pa)[BC / 16][4], u64 dv) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) wgmma_rs<1>(o, pa[kk], dv + (u64)((kk * 2048) >> 4), 1);
    wgmma_commit();
}
// Hides keys j0.. past Nk and (block-causal) in later chunks than the row's (chunks ch0, ch1).
__device__ __forceinline__ void mask(float (&s)[BC / 8][4], int j0, int kfull, int Nk, int ct, int ch0, int ch1, int tq) {
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
}
// Online softmax in the log2 domain: s ← exp2(s·sl2 − m_new) in place, l ← l·c + rowsum, m ← m_new;
// c = exp2(m_old − m_new), the factor for O.
__device__ __forceinline__ void softmax(float (&s)[BC / 8][4], float &m0, float &m1, float &l0, float &l1, float &c0,
                                        float &c1, float sl2) {
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
    c0 = ex2(m0 - ms0);
    c1 = ex2(m1 - ms1);
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
}
// P (bf16, the mma A-fragment layout the RS wgmma reads) from the exponentiated s.
__device__ __forceinline__ void to_p(u32 (&pa)[BC / 16][4], const float (&s)[BC / 8][4]) {
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
        pa[n >> 1][(n & 1) * 2] = pack_bf16(s[n][0], s[n][1]);
        pa[n >> 1][(n & 1) * 2 + 1] = pack_bf16(s[n][2], s[n][3]);
    }
}
}  // namespace fa3
#endif

template <int NS, bool PP, bool VSWAP>
__device__ __forceinline__ void attn_fwd_fa3_body(const bf16_t *__restrict__ q, const bf16_t *__restrict__ k,
                                                  const bf16_t *__restrict__ v, bf16_t *__restrict__ out,
                                                  float *__restrict__ lse, int Nq, int Nk, int H, int ct, int qoff,
                                                  float scale) {
#ifdef ATTN_WGMMA
    using namespace fa3;
    extern __shared__ U4 smem_u4[];
    const u32 sb = (smem_u32(smem_u4) + 1023) & ~1023u;  // 1024-aligned: the swizzle reads address bits 7-9
    const u32 sQ = sb, sK = sb + TILE, sV = sb + TILE * (1 + NS);
    const u32 bars = sb + TILE * (1 + 2 * NS);  // fullQ, fullK[NS], fullV[NS], emptyK[NS], emptyV[NS]
    const u32 fullQ = bars, fullK = bars + 8, fullV = bars + 8 * (1 + NS), emptyK = bars + 8 * (1 + 2 * NS),
              emptyV = bars + 8 * (1 + 3 * NS);

    const int tid = threadIdx.x, wg = tid >> 7;
    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int i0 = qt * BR;
    const ll ldg = (ll)H * HD;
    int kend = Nk, kfull = Nk;  // keys [0, kend) visible to some row of the block, [0, kfull) to all
    if (ct > 0) {
        int ilast = imin(i0 + BR, Nq) - 1;
        kend = imin(Nk, ((qoff + ilast) / ct + 1) * ct);
        kfull = imin(Nk, ((qoff + i0) / ct + 1) * ct);
    }
    const int nkt = (kend + BC - 1) / BC;

    if (tid == 0) {
        mbar_init(fullQ, 128);
#pragma unroll
        for (int s = 0; s < NS; ++s) {
            mbar_init(fullK + 8 * s, 128);
            mbar_init(fullV + 8 * s, 128);
            mbar_init(emptyK + 8 * s, 8);  // one arrival per consumer warp
            mbar_init(emptyV + 8 * s, 8);
        }
    }
    __syncthreads();

    if (wg == 0) {  // producer
        setmaxnreg_dec<40>();
        const int pt = tid;
        const bf16_t *kg = k + (ll)b * Nk * ldg + (ll)h * HD, *vg = v + (ll)b * Nk * ldg + (ll)h * HD;
        load_tile_sw(sQ, q + ((ll)b * Nq + i0) * ldg + (ll)h * HD, ldg, Nq - i0, pt);
        cp_async_arrive(fullQ);
        for (int t = 0; t < nkt; ++t) {
            const int s = t % NS, u = t / NS, j0 = t * BC;
            if (u > 0) mbar_wait(emptyK + 8 * s, (u - 1) & 1);
            load_tile_sw(sK + s * TILE, kg + (ll)j0 * ldg, ldg, Nk - j0, pt);
            cp_async_arrive(fullK + 8 * s);
            if (u > 0) mbar_wait(emptyV + 8 * s, (u - 1) & 1);
            load_tile_sw(sV + s * TILE, vg + (ll)j0 * ldg, ldg, Nk - j0, pt);
            cp_async_arrive(fullV + 8 * s);
        }
        asm volatile("cp.async.wait_all;" ::: "memory");  // no thread leaves with copies in flight
    } else {  // consumers
        setmaxnreg_inc<232>();
        const int c = wg - 1, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, tq = lane & 3;
        const int r0 = i0 + c * 64 + warp * 16 + g;  // rows of the accumulators' c0,c1 (r0) and c2,c3 (r0 + 8)
        const int ch0 = ct > 0 ? (qoff + r0) / ct : 0, ch1 = ct > 0 ? (qoff + r0 + 8) / ct : 0;
        const float sl2 = scale * LOG2E;
        const int rel = lane == 0;  // the thread that releases a stage for its warp
        const u64 dq = desc_sw128(sQ + c * 64 * 128, 16, 1024);
        const u32 VL = VSWAP ? 1024 : BC * 128, VS = VSWAP ? BC * 128 : 1024;
        if (PP && c == 1) bar_arrive(1, 256);  // consumer 0 issues first

        float o[HD / 8][4], s[BC / 8][4];
        u32 pa[BC / 16][4];
        float m0, m1, l0, l1;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

        mbar_wait(fullQ, 0);
        // tile 0
        mbar_wait(fullK, 0);
        fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads through the async one
        if (PP) bar_sync(1 + c, 256);
        fence_regs(s);
        wgmma_fence();
        issue_s(s, dq, desc_sw128(sK, 16, 1024));
        if (PP) bar_arrive(2 - c, 256);
        wgmma_wait<0>();
        fence_regs(s);
        mbar_arrive_if(emptyK, rel);
        m0 = m1 = neg_inf();
        l0 = l1 = 0.f;
        {
            float c0, c1;
            mask(s, 0, kfull, Nk, ct, ch0, ch1, tq);
            softmax(s, m0, m1, l0, l1, c0, c1, sl2);
        }
        to_p(pa, s);

        for (int t = 1; t < nkt; ++t) {
            const int st = t % NS, sp = (t - 1) % NS;
            mbar_wait(fullK + 8 * st, (t / NS) & 1);
            mbar_wait(fullV + 8 * sp, ((t - 1) / NS) & 1);
            fence_proxy_async();
            if (PP) bar_sync(1 + c, 256);
            fence_regs(s);
            fence_regs(o);
            fence_regs(pa);
            wgmma_fence();
            issue_s(s, dq, desc_sw128(sK + st * TILE, 16, 1024));
            issue_pv(o, pa, desc_sw128(sV + sp * TILE, VL, VS));
            if (PP) bar_arrive(2 - c, 256);
            wgmma_wait<1>();  // S_t is done; P_{t−1}·V_{t−1} may still run
            fence_regs(s);
            mbar_arrive_if(emptyK + 8 * st, rel);
            float c0, c1;
            mask(s, t * BC, kfull, Nk, ct, ch0, ch1, tq);
            softmax(s, m0, m1, l0, l1, c0, c1, sl2);
            wgmma_wait<0>();  // P_{t−1}·V_{t−1} landed in o; pa is free
            fence_regs(o);
            fence_regs(pa);
            mbar_arrive_if(emptyV + 8 * sp, rel);
#pragma unroll
            for (int n = 0; n < HD / 8; ++n) {
                o[n][0] *= c0;
                o[n][1] *= c0;
                o[n][2] *= c1;
                o[n][3] *= c1;
            }
            to_p(pa, s);
        }
        {  // the last tile's P·V
            const int sp = (nkt - 1) % NS;
            mbar_wait(fullV + 8 * sp, ((nkt - 1) / NS) & 1);
            fence_proxy_async();
            if (PP) bar_sync(1 + c, 256);
            fence_regs(o);
            fence_regs(pa);
            wgmma_fence();
            issue_pv(o, pa, desc_sw128(sV + sp * TILE, VL, VS));
            if (PP && c == 0) bar_arrive(2, 256);  // consumer 1's last turn; consumer 0 has none left
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
    }
#else
    asm volatile("trap;");  // sm_90a only: attention.go launches it on compute capability 9.0 alone
#endif
}
// 384 threads (a producer and two consumer warpgroups); shared memory 1024 (alignment) + 32 KB·(1 + 2·NS)
// + 8·(1 + 4·NS) bytes of mbarriers (attention.go attnFwdSm90Smem).
#define FWD3(NS, PP, VSWAP, NAME)                                                                        \
    extern "C" __global__ void __launch_bounds__(384, 1)                                                 \
        NAME(const bf16_t *q, const bf16_t *k, const bf16_t *v, bf16_t *out, float *lse, int Nq, int Nk, \
             int H, int ct, int qoff, float scale) {                                                     \
        attn_fwd_fa3_body<NS, PP, VSWAP>(q, k, v, out, lse, Nq, Nk, H, ct, qoff, scale);                 \
    }
FWD3(2, true, false, attn_fwd_hd128_bf16_sm90)  // shipped: two stages, ping-pong consumers

// ---------------------------------------------------------------------------------------------
// Fast backward. Prep: D[b,h,i] = Σ_d dO·O (fp32 [B,H,Nq]). Main: one block per 128-key tile (8 warps
// × 16 keys), looping over 64-query tiles (Q, dO, lse, D double-buffered); with qsplit > 1 (few key
// tiles, e.g. cross-attention's 512 keys: 48 blocks for 132 SMs) qsplit blocks per key tile take
// equal runs of the query tiles and add their dK, dV with fp32 atomics (fp32 gradients only). Per warp, transposed:
//   Sᵀ = K_w Qᵀ, Pᵀ = exp(Sᵀ·scale − lse), dV_w += Pᵀ dO, dPᵀ = V_w dOᵀ, dSᵀ = Pᵀ∘(dPᵀ − D),
//   dK_w += dSᵀ Q; dSᵀ goes through shared memory for dQ += dS K (fp32 atomics, ×scale).
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void attn_bwd_prep_body(float *__restrict__ D, const T *__restrict__ dO,
                                                   const T *__restrict__ O, int B, int Nq, int H, int hd) {
    // one warp per (b, i, h) row; hd even
    ll row = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= (ll)B * Nq * H) return;
    const T *a = dO + row * hd, *c = O + row * hd;
    float acc = 0.f;
    for (int d = 2 * lane; d < hd; d += 64) {
        F2 x = Elem<T>::ld2(a + d), y = Elem<T>::ld2(c + d);
        acc += x.x * y.x + x.y * y.y;
    }
    acc = warp_sum(acc);
    if (lane == 0) {
        int h = (int)(row % H);
        ll bi = row / H;
        int i = (int)(bi % Nq), b = (int)(bi / Nq);
        D[((ll)b * H + h) * Nq + i] = acc;
    }
}
extern "C" __global__ void attn_bwd_prep_bf16(float *D, const bf16_t *dO, const bf16_t *O, int B, int Nq, int H,
                                              int hd) {
    attn_bwd_prep_body<bf16_t>(D, dO, O, B, Nq, H, hd);
}
extern "C" __global__ void attn_bwd_prep_f32(float *D, const float *dO, const float *O, int B, int Nq, int H,
                                             int hd) {
    attn_bwd_prep_body<float>(D, dO, O, B, Nq, H, hd);
}
// dst[i] += src[i] (dst in storage dtype dt, src fp32): folds an fp32 dQ buffer into a bf16/fp16 dQ.
extern "C" __global__ void attn_add_f32_into(void *dst, int dt, const float *src, ll n) {
    GRID_STRIDE(i, n) st(dst, i, dt, ld(dst, i, dt) + src[i]);
}

template <int HD, int NW> struct BwdCfg {
    static constexpr int BC = NW * 16, BR = 64, NT = NW * 32, LD = HD + 8, LDS = BR + 8;
    // sK, sV [BC][LD]; sQ, sdO [2][BR][LD]; sdS [BC][LDS]; sL, sD [2][BR] fp32
    static constexpr int SMEM = (2 * BC * LD + 4 * BR * LD + BC * LDS) * 2 + 4 * BR * 4;
};

// dK += scale·dk, dV += dv for a thread's two key rows kr0, kr0 + 8 from its fp32 sums (the mma.sync
// C layout, which wgmma's accumulators share: dk[n][2r], dk[n][2r + 1] are columns 8n + 2tq, +1 of row
// kr0 + 8r); null gradients skipped. Both backward kernels end with it. qsplit > 1: other blocks add
// to the same rows, by atomics (fp32; bf16x2 for the sm_90a kernel's tail split).
template <int HD, typename G>
__device__ __forceinline__ void bwd_store_dkdv(G *dK, G *dV, const float (&dk)[HD / 8][4], const float (&dv)[HD / 8][4],
                                               int b, int h, int kr0, int Nk, ll ldg, int tq, float scale, int qsplit) {
    G *dkg = dK + ((ll)b * Nk + kr0) * ldg + (ll)h * HD + 2 * tq;
    G *dvg = dV + ((ll)b * Nk + kr0) * ldg + (ll)h * HD + 2 * tq;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (kr0 + 8 * r >= Nk) continue;
        const ll off = 8 * r * ldg;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            if (qsplit > 1) {
                if (dK) red_add2(dkg + off + n * 8, dk[n][2 * r] * scale, dk[n][2 * r + 1] * scale);
                if (dV) red_add2(dvg + off + n * 8, dv[n][2 * r], dv[n][2 * r + 1]);
                continue;
            }
            if (dK) {
                F2 x = Elem<G>::ld2(dkg + off + n * 8);
                Elem<G>::st2(dkg + off + n * 8, x.x + dk[n][2 * r] * scale, x.y + dk[n][2 * r + 1] * scale);
            }
            if (dV) {
                F2 x = Elem<G>::ld2(dvg + off + n * 8);
                Elem<G>::st2(dvg + off + n * 8, x.x + dv[n][2 * r], x.y + dv[n][2 * r + 1]);
            }
        }
    }
}

template <int HD, int NW, typename T, typename G>
__device__ __forceinline__ void attn_bwd_body(G *__restrict__ dK, G *__restrict__ dV, float *__restrict__ dQacc,
                                              const T *__restrict__ dO, const float *__restrict__ lse,
                                              const float *__restrict__ Dg, const T *__restrict__ q,
                                              const T *__restrict__ k, const T *__restrict__ v, int Nq, int Nk,
                                              int H, int ct, int qoff, float scale, int qsplit) {
    typedef BwdCfg<HD, NW> C;
    static_assert(NW == 4 || NW == 8, "the dQ split assumes 4 query groups × NW/4 column groups");
    constexpr int BC = C::BC, BR = C::BR, NT = C::NT, LD = C::LD, LDS = C::LDS;
    extern __shared__ U4 smem_u4[];
    bf16_t *sK = (bf16_t *)smem_u4;  // [BC][LD]
    bf16_t *sV = sK + BC * LD;       // [BC][LD]
    bf16_t *sQ = sV + BC * LD;       // [2][BR][LD]
    bf16_t *sdO = sQ + 2 * BR * LD;  // [2][BR][LD]
    bf16_t *sdS = sdO + 2 * BR * LD; // [BC][LDS]  dSᵀ, bf16
    float *sL = (float *)(sdS + BC * LDS);  // [2][BR]
    float *sD = sL + 2 * BR;                // [2][BR]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int ntk = (Nk + BC - 1) / BC;
    const int kt = blockIdx.x % ntk, sp = blockIdx.x / ntk, h = blockIdx.y, b = blockIdx.z;
    const int j0 = kt * BC;
    const ll ldg = (ll)H * HD;

    // Queries that see some key of this tile: i >= istart. Rows i < imask may miss some key of it.
    int istart = 0, imask = 0;
    if (ct > 0) {
        int jlast = imin(j0 + BC, Nk) - 1;
        istart = imax(0, (j0 / ct) * ct - qoff);
        imask = (jlast / ct) * ct - qoff;
    }
    if (istart >= Nq) return;  // no query sees these keys: their gradients get += 0
    int qt0 = istart / BR, nqt = (Nq + BR - 1) / BR;
    if (qsplit > 1) {  // this block's run of the query tiles [qt0, nqt)
        const int per = (nqt - qt0 + qsplit - 1) / qsplit;
        qt0 += sp * per;
        nqt = imin(nqt, qt0 + per);
        if (qt0 >= nqt) return;
    }

    const T *qg = q + (ll)b * Nq * ldg + (ll)h * HD;
    const T *dOg = dO + (ll)b * Nq * ldg + (ll)h * HD;
    const float *lseg = lse + ((ll)b * H + h) * Nq;
    const float *Dgh = Dg + ((ll)b * H + h) * Nq;

    load_tile<HD, LD, BC, NT>(sK, k + ((ll)b * Nk + j0) * ldg + (ll)h * HD, ldg, Nk - j0, tid);
    load_tile<HD, LD, BC, NT>(sV, v + ((ll)b * Nk + j0) * ldg + (ll)h * HD, ldg, Nk - j0, tid);
    auto load_q = [&](int qt, int st) {
        int i0 = qt * BR;
        load_tile<HD, LD, BR, NT>(sQ + st * BR * LD, qg + (ll)i0 * ldg, ldg, Nq - i0, tid);
        load_tile<HD, LD, BR, NT>(sdO + st * BR * LD, dOg + (ll)i0 * ldg, ldg, Nq - i0, tid);
        if (tid < BR) {
            bool ok = i0 + tid < Nq;
            cp_async4(sL + st * BR + tid, ok ? lseg + i0 + tid : lseg, ok ? 4 : 0);
        } else if (tid < 2 * BR) {
            int r = tid - BR;
            bool ok = i0 + r < Nq;
            cp_async4(sD + st * BR + r, ok ? Dgh + i0 + r : Dgh, ok ? 4 : 0);
        }
    };
    load_q(qt0, 0);
    cp_commit();

    const float sl2 = scale * LOG2E;
    const int kr0 = j0 + warp * 16 + g;  // key row of c0,c1; kr0+8 of c2,c3
    const int kc0 = ct > 0 ? kr0 / ct : 0, kc1 = ct > 0 ? (kr0 + 8) / ct : 0;
    float dv[HD / 8][4], dk[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dv[n][e] = dk[n][e] = 0.f;

    for (int qt = qt0, it = 0; qt < nqt; ++qt, ++it) {
        const int st = it & 1, i0 = qt * BR;
        __syncthreads();  // iteration it-1 is done with sdS and stage st^1
        if (qt + 1 < nqt) {
            load_q(qt + 1, st ^ 1);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const bf16_t *sQs = sQ + st * BR * LD, *sdOs = sdO + st * BR * LD;
        const float *sLs = sL + st * BR, *sDs = sD + st * BR;
        const bool need_mask = i0 + BR > Nq || j0 + BC > Nk || (ct > 0 && i0 < imask);

        // Sᵀ = K_w Qᵀ  [16 keys × BR queries]
        float s[BR / 8][4];
#pragma unroll
        for (int n = 0; n < BR / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            u32 a[4];
            ldsm_x4(a, sK + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int p = 0; p < BR / 16; ++p) {
                u32 bb[4];
                ldsm_x4(bb, sQs + (p * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                mma(s[2 * p], a, bb[0], bb[1]);
                mma(s[2 * p + 1], a, bb[2], bb[3]);
            }
        }
        // Pᵀ = exp2(Sᵀ·scale·log2e − lse·log2e), masked to 0
#pragma unroll
        for (int n = 0; n < BR / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                int qi = n * 8 + 2 * tq + e;
                float L = sLs[qi] * LOG2E;
                float p0 = ex2(fmaf(s[n][e], sl2, -L)), p1 = ex2(fmaf(s[n][2 + e], sl2, -L));
                if (need_mask) {
                    int i = i0 + qi;
                    int cq = ct > 0 ? (qoff + i) / ct : 0;
                    if (i >= Nq || kr0 >= Nk || kc0 > cq) p0 = 0.f;
                    if (i >= Nq || kr0 + 8 >= Nk || kc1 > cq) p1 = 0.f;
                }
                s[n][e] = p0;
                s[n][2 + e] = p1;
            }
        // dV_w += Pᵀ dO
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) {
            u32 a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                        pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int p = 0; p < HD / 16; ++p) {
                u32 bb[4];
                ldsm_x4_t(bb, sdOs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + p * 16 + (lane >> 4) * 8);
                mma(dv[2 * p], a, bb[0], bb[1]);
                mma(dv[2 * p + 1], a, bb[2], bb[3]);
            }
        }
        // dPᵀ = V_w dOᵀ
        float dp[BR / 8][4];
#pragma unroll
        for (int n = 0; n < BR / 8; ++n) dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            u32 a[4];
            ldsm_x4(a, sV + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int p = 0; p < BR / 16; ++p) {
                u32 bb[4];
                ldsm_x4(bb, sdOs + (p * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                mma(dp[2 * p], a, bb[0], bb[1]);
                mma(dp[2 * p + 1], a, bb[2], bb[3]);
            }
        }
        // dSᵀ = Pᵀ ∘ (dPᵀ − D); to shared memory for dQ
#pragma unroll
        for (int n = 0; n < BR / 8; ++n) {
            float D0 = sDs[n * 8 + 2 * tq], D1 = sDs[n * 8 + 2 * tq + 1];
            dp[n][0] = s[n][0] * (dp[n][0] - D0);
            dp[n][1] = s[n][1] * (dp[n][1] - D1);
            dp[n][2] = s[n][2] * (dp[n][2] - D0);
            dp[n][3] = s[n][3] * (dp[n][3] - D1);
            *(u32 *)(sdS + (warp * 16 + g) * LDS + n * 8 + 2 * tq) = pack_bf16(dp[n][0], dp[n][1]);
            *(u32 *)(sdS + (warp * 16 + g + 8) * LDS + n * 8 + 2 * tq) = pack_bf16(dp[n][2], dp[n][3]);
        }
        // dK_w += dSᵀ Q
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) {
            u32 a[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                        pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                        pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
            for (int p = 0; p < HD / 16; ++p) {
                u32 bb[4];
                ldsm_x4_t(bb, sQs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + p * 16 + (lane >> 4) * 8);
                mma(dk[2 * p], a, bb[0], bb[1]);
                mma(dk[2 * p + 1], a, bb[2], bb[3]);
            }
        }
        if (dQacc == nullptr) continue;  // uniform across the block
        __syncthreads();
        // dQ[16 queries × DQC columns] per warp: rows (warp&3)*16, columns (warp>>2)*DQC; k = the BC keys
        {
            constexpr int DQC = HD / (NW / 4);
            const int qr = (warp & 3) * 16, hc = (warp >> 2) * DQC;
            float dq[DQC / 8][4];
#pragma unroll
            for (int n = 0; n < DQC / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                u32 a[4];
                ldsm_x4_t(a, sdS + (kk * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + qr + ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int p = 0; p < DQC / 16; ++p) {
                    u32 bb[4];
                    ldsm_x4_t(bb, sK + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + hc + p * 16 + (lane >> 4) * 8);
                    mma(dq[2 * p], a, bb[0], bb[1]);
                    mma(dq[2 * p + 1], a, bb[2], bb[3]);
                }
            }
            const int i = i0 + qr + g;
            float *dqg = dQacc + ((ll)b * Nq + i) * ldg + (ll)h * HD + hc + 2 * tq;
            if (i < Nq) {
#pragma unroll
                for (int n = 0; n < DQC / 8; ++n) red_add2(dqg + n * 8, dq[n][0] * scale, dq[n][1] * scale);
            }
            if (i + 8 < Nq) {
#pragma unroll
                for (int n = 0; n < DQC / 8; ++n) red_add2(dqg + 8 * ldg + n * 8, dq[n][2] * scale, dq[n][3] * scale);
            }
        }
    }

    // dK += scale·dK_w, dV += dV_w for this warp's 16 keys
    bwd_store_dkdv<HD, G>(dK, dV, dk, dv, b, h, kr0, Nk, ldg, tq, scale, qsplit);
}

// Launch configuration (attention.go mirrors it): 8 warps, 128 keys per block.
#define BWD(HD, NW, T, G, NAME)                                                                                 \
    extern "C" __global__ void __launch_bounds__(NW * 32)                                                       \
        NAME(G *dK, G *dV, float *dQacc, const T *dO, const float *lse, const float *D, const T *q, const T *k, \
             const T *v, int Nq, int Nk, int H, int ct, int qoff, float scale, int qsplit) {                    \
        attn_bwd_body<HD, NW, T, G>(dK, dV, dQacc, dO, lse, D, q, k, v, Nq, Nk, H, ct, qoff, scale, qsplit);    \
    }
BWD(128, 8, bf16_t, float, attn_bwd_hd128_bf16_gf32)
BWD(128, 8, bf16_t, bf16_t, attn_bwd_hd128_bf16_gbf16)
BWD(128, 8, float, float, attn_bwd_hd128_f32_gf32)
BWD(64, 8, bf16_t, float, attn_bwd_hd64_bf16_gf32)
BWD(64, 8, bf16_t, bf16_t, attn_bwd_hd64_bf16_gbf16)
BWD(64, 8, float, float, attn_bwd_hd64_f32_gf32)

// ---------------------------------------------------------------------------------------------
// Hopper backward, FA3-style (Shah et al. 2024, §3), hd 128, bf16 storage, sm_90a. Block: 3
// warpgroups (384 threads) on one 128-key tile; query tiles of 64 (ATTENTION_NOTES v7, v8).
//   warpgroup 0, the producer (setmaxnreg 24): cp.async of K_j, V_j once, then of Q_i, dO_i, lse_i,
//     D_i into a 2-stage ring (mbarriers full/empty, as the forward's);
//   warpgroups 1, 2, the consumers (setmaxnreg 240): 64 keys each. Per query tile i (MODE 5, the
//     shipped one; attn_bwd_sm90_body has the others): Sᵀ = K_c Q_iᵀ and dPᵀ = V_c dO_iᵀ issued
//     together (SS wgmma m64n64), Pᵀ = exp2(Sᵀ·scale·log2e − lse·log2e) (masked to 0) while dPᵀ runs,
//     dSᵀ = Pᵀ∘(dPᵀ − D); Pᵀ, dSᵀ as bf16 A fragments and dSᵀ also into shared memory (bf16, swizzled,
//     double-buffered); dV_c += Pᵀ dO_i, then dK_c += dSᵀ Q_i (RS, dO, Q read MN-major), two wgmma
//     groups; once dV is done and both consumers wrote dSᵀ (named barrier 1), consumer c issues
//     dQ_i[:, 64c..64c+63] = dS K_j[:, 64c..] (SS, A = dSᵀ read MN-major, K MN-major), which runs while
//     dK finishes; the stage is released once dK is done; dQ is staged ×scale in shared memory in
//     register order and added to the fp32 dQ scratch with one bulk reduction (bwd_dq_tile);
//     attn_dq_finish_sm90 adds the scratch into dQ. dK, dV leave the registers once, at the end
//     (bwd_store_dkdv, as the mma.sync kernel's).
// Shared memory (1024-aligned; 128-byte swizzle as the forward's): K, V 32 KB each; Q, dO 2 × 16 KB
// each; dSᵀ 2 × 16 KB; dQ staging 2 × 64 rows × 288 bytes (one per consumer; DQT 0 uses 16 KB of
// it); lse, D 2 × 512 B; 5 mbarriers. qsplit as in attn_bwd_body (fp32 gradients only), or < 0: the tail
// split (attention.go attnBwdTail; both gradient types): only the grid's last R key tiles are split, in s
// blocks each, so that the last wave fills the SMs (3,072 tiles on 132 SMs: 23.3 waves of equal blocks).
// ---------------------------------------------------------------------------------------------
#ifdef ATTN_WGMMA
// D[64×64] (+)= A[64×16]·B[16×64], both by shared-memory descriptors; TA/TB 1: MN-major.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss64(float (&d)[8][4], u64 da, u64 db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
}
// D[64×32] (+)= A[64×16]·B[16×32], both K-major by shared-memory descriptors.
__device__ __forceinline__ void wgmma_ss32(float (&d)[4][4], u64 da, u64 db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
        : "l"(da), "l"(db), "r"(acc));
}
namespace fa3b {
using namespace fa3;
constexpr int BRQ = 64;                       // queries per tile
constexpr int KT = 128 * 128 * 2;             // bytes of a K or V tile
constexpr int QT = BRQ * 128 * 2;             // bytes of a Q or dO tile (two 64-row × 64-column blocks of 8 KB)
constexpr int DQP = 288;                      // dQ staging: bytes per query row (256 + 32: no bank conflicts)
constexpr int DQS = BRQ * DQP;                // dQ staging of one consumer
constexpr int OFF_K = 0, OFF_V = KT, OFF_Q = 2 * KT, OFF_DO = OFF_Q + 2 * QT, OFF_DS = OFF_DO + 2 * QT,
              OFF_DQ = OFF_DS + 2 * QT, OFF_LD = OFF_DQ + 2 * DQS, OFF_BAR = OFF_LD + 2 * 512;
static_assert(1024 + OFF_BAR + 8 * 5 == 202792, "attention.go attnBwdSm90Smem");

// Producer thread pt (0..127): ROWS rows (global rows g, stride ldg; rows at or past `valid` zero-filled)
// into the swizzled tile at dst (two ROWS × 64-column blocks of ROWS·128 bytes).
template <int ROWS>
__device__ __forceinline__ void load_rows_sw(u32 dst, const bf16_t *g, ll ldg, int valid, int pt) {
    const int r0 = pt >> 4, ch = pt & 15;
    u32 d = dst + (ch >> 3) * (ROWS * 128) + r0 * 128 + (((ch & 7) ^ r0) << 4);
    const bf16_t *s = g + r0 * ldg + ch * 8;
    const ll step = 8 * ldg;
    if (valid >= ROWS) {
#pragma unroll 4
        for (int i = 0; i < ROWS / 8; ++i, d += 1024, s += step) cp_async16s(d, s, 16);
    } else {
#pragma unroll 4
        for (int i = 0; i < ROWS / 8; ++i, d += 1024, s += step) {
            const bool ok = r0 + 8 * i < valid;
            cp_async16s(d, ok ? s : g, ok ? 16 : 0);
        }
    }
}
__device__ __forceinline__ void cp_async4s(u32 dst, const void *src, int n) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
// k-step kk (16 of the 128 hd columns) of a K-major swizzled tile of R rows: +kk%4·32 bytes in the
// swizzle row, +R·128 past column 64 (descriptor units of 16 bytes).
template <int R> __device__ __forceinline__ u64 kstep(int kk) { return (u64)((((kk & 3) * 32) + (kk >> 2) * (R * 128)) >> 4); }
// Shared-memory loads and stores by 32-bit address (no 64-bit generic pointers live in the loop).
__device__ __forceinline__ float lds_f32(u32 a) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(a) : "memory");
    return v;
}
__device__ __forceinline__ void sts_u32(u32 a, u32 v) { asm volatile("st.shared.b32 [%0], %1;" ::"r"(a), "r"(v) : "memory"); }
__device__ __forceinline__ void sts_v4(u32 a, float x, float y, float z, float w) {
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(a), "f"(x), "f"(y), "f"(z), "f"(w) : "memory");
}
__device__ __forceinline__ void sts_v2(u32 a, float x, float y) {
    asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(a), "f"(x), "f"(y) : "memory");
}
__device__ __forceinline__ F4 lds_v4(u32 a) {
    F4 v;
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(a) : "memory");
    return v;
}
// The consumer's 64 × 64 dQ accumulators dq (the wgmma C layout: warp w holds rows 16w + g and
// 16w + g + 8, columns 8n + 2tq, +1) ×scale, added to dQ; barid: the consumer's named barrier (128
// threads); stage: its DQS bytes of shared memory. Three ways (DQT of attn_bwd_sm90_body):
// 0 bwd_dq_tile: staged in register order, one 16 KB bulk reduction by thread 0 into a tile of the
//   fp32 scratch (⌈Nq/64⌉ tiles of 64 × 128 per (b, h); attn_dq_finish_sm90 adds it into dQ);
// 1 bwd_dq_out: staged row by row, one 256-byte bulk reduction per query row straight into an fp32
//   dQ [B,Nq,H,128];
// 2 bwd_dq_red: staged row by row, then 16-byte red.global.add.v4.f32 by all 128 threads into it.
__device__ __forceinline__ void bwd_dq_tile(const float (&dq)[8][4], u32 stage, float *dst, float scale, int ct_, int warp,
                                            int lane, int barid) {
    if (ct_ == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");  // the last tile's reduction read its staging
    bar_sync(barid, 128);
#pragma unroll
    for (int n = 0; n < 8; ++n)
        sts_v4(stage + ((warp * 8 + n) * 32 + lane) * 16, dq[n][0] * scale, dq[n][1] * scale, dq[n][2] * scale, dq[n][3] * scale);
    fence_proxy_async();  // the staging stores, for the bulk copy's async proxy
    bar_sync(barid, 128);
    if (ct_ == 0) {
        asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], 16384;" ::"l"(dst), "r"(stage)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    }
}
__device__ __forceinline__ void bwd_dq_red(const float (&dq)[8][4], u32 stage, float *dst, ll ldg, int rows, float scale,
                                           int ct_, int warp, int g, int tq, int barid) {
    bar_sync(barid, 128);  // the last tile's staging is read
    const u32 r = stage + (warp * 16 + g) * DQP + tq * 8;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
        sts_v2(r + n * 32, dq[n][0] * scale, dq[n][1] * scale);
        sts_v2(r + 8 * DQP + n * 32, dq[n][2] * scale, dq[n][3] * scale);
    }
    bar_sync(barid, 128);
    const int ch = ct_ & 15;  // 16-byte chunk of a row; rows ct_/16 + 8j
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int row = j * 8 + (ct_ >> 4);
        if (row < rows) red_add4(dst + row * ldg + ch * 4, lds_v4(stage + row * DQP + ch * 16));
    }
}
// dQ[i0 + r, col0 + 0..63] += scale·dq for the consumer's 64 × 64 accumulators dq (the wgmma C
// layout: warp w holds rows 16w + g and 16w + g + 8, columns 8n + 2tq, +1), dst = the fp32 dQ
// accumulator at (i0, col0), rows ldg apart, `rows` of them valid. Staged row by row in shared memory
// (stage: DQS bytes, rows DQP apart), then one 256-byte bulk reduction per row, issued by thread r
// (0..63) of the consumer, which first waits until its previous one has read the staging. barid: the
// consumer's named barrier (128 threads).
__device__ __forceinline__ void bwd_dq_out(const float (&dq)[8][4], u32 stage, float *dst, ll ldg, int rows, float scale,
                                           int ct_, int warp, int g, int tq, int barid) {
    if (ct_ < BRQ) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
    bar_sync(barid, 128);
    const u32 r = stage + (warp * 16 + g) * DQP + tq * 8;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
        sts_v2(r + n * 32, dq[n][0] * scale, dq[n][1] * scale);
        sts_v2(r + 8 * DQP + n * 32, dq[n][2] * scale, dq[n][3] * scale);
    }
    fence_proxy_async();  // the staging stores, for the bulk copy's async proxy
    bar_sync(barid, 128);
    if (ct_ < rows) {
        asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], 256;" ::"l"(dst + ct_ * ldg),
                     "r"(stage + ct_ * DQP)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    }
}
// Pᵀ = exp2(Sᵀ·sl2 − lse·log2e) in place on NB column blocks of 8 queries from block nb0, masked to 0
// (queries past Nq, keys past Nk, keys of later chunks than the query's). Rows kr0, kr0 + 8.
template <int NB>
__device__ __forceinline__ void bwd_p(float (&st)[NB][4], int nb0, u32 LDs, float sl2, bool need_mask, int i0, int kr0,
                                      int Nq, int Nk, int ct, int qoff, int tq) {
    int kc0 = 0, kc1 = 0;
    if (need_mask && ct > 0) {
        kc0 = kr0 / ct;
        kc1 = (kr0 + 8) / ct;
    }
#pragma unroll
    for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int qi = (nb0 + n) * 8 + 2 * tq + e;
            const float L = lds_f32(LDs + qi * 4) * LOG2E;
            float p0 = ex2(fmaf(st[n][e], sl2, -L)), p1 = ex2(fmaf(st[n][2 + e], sl2, -L));
            if (need_mask) {
                const int i = i0 + qi;
                const int cq = ct > 0 ? (qoff + i) / ct : 0;
                if (i >= Nq || kr0 >= Nk || kc0 > cq) p0 = 0.f;
                if (i >= Nq || kr0 + 8 >= Nk || kc1 > cq) p1 = 0.f;
            }
            st[n][e] = p0;
            st[n][2 + e] = p1;
        }
}
// Column block n (queries 8n + 2tq, +1; rows r, r + 8): Pᵀ (p0..p3, the accumulator order) into the A
// fragments pa, dSᵀ = Pᵀ∘(dPᵀ − D) into da and (wantQ) into the swizzled dSᵀ tile (chunk n of the row).
__device__ __forceinline__ void bwd_ds(u32 (&pa)[4][4], u32 (&da)[4][4], int n, float p0, float p1, float p2, float p3,
                                       const float (&dp)[4], u32 LDs, u32 dsrow, int g, int tq, bool wantQ) {
    const float D0 = lds_f32(LDs + 256 + (n * 8 + 2 * tq) * 4), D1 = lds_f32(LDs + 256 + (n * 8 + 2 * tq + 1) * 4);
    pa[n >> 1][(n & 1) * 2] = pack_bf16(p0, p1);
    pa[n >> 1][(n & 1) * 2 + 1] = pack_bf16(p2, p3);
    const u32 lo = pack_bf16(p0 * (dp[0] - D0), p1 * (dp[1] - D1)), hi = pack_bf16(p2 * (dp[2] - D0), p3 * (dp[3] - D1));
    da[n >> 1][(n & 1) * 2] = lo;
    da[n >> 1][(n & 1) * 2 + 1] = hi;
    if (wantQ) {
        sts_u32(dsrow + ((n ^ g) << 4), lo);
        sts_u32(dsrow + 1024 + ((n ^ g) << 4), hi);
    }
}
}  // namespace fa3b
#endif

// PREG, CREG: setmaxnreg of the producer and of the consumers (PREG + 2·CREG <= 512); OPQ: the
// consumers' A-operand descriptors pass an empty asm each query tile, so that the compiler does not
// hoist all 24 k-step descriptors (48 registers) out of the loop. ROT: block kt takes its query tiles
// from the (kt mod count)-th on, round, so that the blocks of one head do not all add into the same
// dQ rows at once. MODE, how much is live at once and how the wgmmas follow each other
// (ATTENTION_NOTES v7, v8), and DQT, the way dQ leaves (bwd_dq_tile, bwd_dq_out, bwd_dq_red):
//   0 Sᵀ and dPᵀ (m64n64) issued together, dQ issued while dV, dK run (dK, dV + 64 fp32 in both
//     phases: ptxas serializes the wgmmas, C7512);
//   1 Sᵀ, then dPᵀ with Pᵀ packed to bf16 (dSᵀ from the bf16 Pᵀ), dQ after dV, dK;
//   2 Sᵀ, dPᵀ in two halves of 32 queries (m64n32, fp32 Pᵀ), dQ after dV, dK (shipped);
//   4 as 2, then FA3's order: dV, dK as two groups; once dV is done the meeting (named barrier 1) and
//     dQ, which runs while dK finishes; the Q/dO stage released once dK is done;
//   5 as 4 with MODE 0's Sᵀ and dPᵀ (m64n64, issued together);
//   6 as 2, but each consumer adds its own 64 keys' share of dQ (all 128 columns, two m64n64 halves,
//     k = 64 keys) from its own dSᵀ rows: no meeting of the consumers, twice the dQ reductions;
//   7 MODE 5's Sᵀ, dPᵀ with MODE 6's dQ.
template <typename G, int PREG, int CREG, bool OPQ, int MODE, bool ROT, int DQT>
__device__ __forceinline__ void attn_bwd_sm90_body(G *__restrict__ dK, G *__restrict__ dV, float *__restrict__ dQacc,
                                                   const bf16_t *__restrict__ dO, const float *__restrict__ lse,
                                                   const float *__restrict__ Dg, const bf16_t *__restrict__ q,
                                                   const bf16_t *__restrict__ k, const bf16_t *__restrict__ v, int Nq,
                                                   int Nk, int H, int ct, int qoff, float scale, int qsplit) {
#ifdef ATTN_WGMMA
    using namespace fa3b;
    constexpr int HD = 128, BC = 128;
    extern __shared__ U4 smem_u4[];
    const u32 s0 = smem_u32(smem_u4), sb = (s0 + 1023) & ~1023u;
    const u32 sK = sb + OFF_K, sV = sb + OFF_V, sQ = sb + OFF_Q, sdO = sb + OFF_DO, sdS = sb + OFF_DS;
    const u32 bars = sb + OFF_BAR;  // fullKV, full[2], empty[2]
    const u32 fullKV = bars, full = bars + 8, empty = bars + 24;

    const int tid = threadIdx.x, wg = tid >> 7;
    const int ntk = (Nk + BC - 1) / BC;
    int kt = blockIdx.x % ntk, sp = blockIdx.x / ntk, h = blockIdx.y, b = blockIdx.z;
    if (qsplit < 0) {  // tail split (attention.go attnBwdTail): a 1-D grid over the units u = kt + ntk·(h + H·b);
        // the last R units (qsplit = −(R·256 + s)) in s blocks each, which share their query tiles:
        // the grid's last wave no longer leaves most SMs idle
        const int ns = -qsplit & 255, R = -qsplit >> 8, F = gridDim.x - R * ns;  // F whole units first
        int u = blockIdx.x;
        sp = 0;
        qsplit = 1;
        if (u >= F) {
            sp = (u - F) % ns;
            u = F + (u - F) / ns;
            qsplit = ns;
        }
        kt = u % ntk;
        h = (u / ntk) % H;
        b = u / ntk / H;
    }
    const int j0 = kt * BC;
    const ll ldg = (ll)H * HD;
    // Queries that see some key of this tile: i >= istart. Rows i < imask may miss some key of it.
    int istart = 0, imask = 0;
    if (ct > 0) {
        int jlast = imin(j0 + BC, Nk) - 1;
        istart = imax(0, (j0 / ct) * ct - qoff);
        imask = (jlast / ct) * ct - qoff;
    }
    if (istart >= Nq) return;  // no query sees these keys (uniform over the block)
    const int nqt_all = (Nq + BRQ - 1) / BRQ;
    int qt0 = istart / BRQ, nqt = nqt_all;
    if (qsplit > 1) {
        const int per = (nqt - qt0 + qsplit - 1) / qsplit;
        qt0 += sp * per;
        nqt = imin(nqt, qt0 + per);
        if (qt0 >= nqt) return;
    }
    const int nit = nqt - qt0;
    const int rot = ROT ? kt % nit : 0;
    auto qtile = [&](int it) {  // the query tile of iteration it
        const int x = it + rot;
        return qt0 + (x >= nit ? x - nit : x);
    };

    if (tid == 0) {
        mbar_init(fullKV, 128);
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            mbar_init(full + 8 * s, 128);
            mbar_init(empty + 8 * s, 8);  // one arrival per consumer warp
        }
    }
    __syncthreads();

    if (wg == 0) {  // producer
        setmaxnreg_dec<PREG>();
        const int pt = tid;
        const bf16_t *qg = q + (ll)b * Nq * ldg + (ll)h * HD, *dOg = dO + (ll)b * Nq * ldg + (ll)h * HD;
        const float *lg = pt < 64 ? lse + ((ll)b * H + h) * Nq : Dg + ((ll)b * H + h) * Nq;
        load_rows_sw<128>(sK, k + ((ll)b * Nk + j0) * ldg + (ll)h * HD, ldg, Nk - j0, pt);
        load_rows_sw<128>(sV, v + ((ll)b * Nk + j0) * ldg + (ll)h * HD, ldg, Nk - j0, pt);
        cp_async_arrive(fullKV);
        for (int it = 0; it < nit; ++it) {
            const int s = it & 1, u = it >> 1, i0 = qtile(it) * BRQ;
            if (u > 0) mbar_wait(empty + 8 * s, (u - 1) & 1);
            load_rows_sw<BRQ>(sQ + s * QT, qg + (ll)i0 * ldg, ldg, Nq - i0, pt);
            load_rows_sw<BRQ>(sdO + s * QT, dOg + (ll)i0 * ldg, ldg, Nq - i0, pt);
            const int r = i0 + (pt & 63);  // lse (threads 0..63) or D (64..127) of query r
            cp_async4s(sb + OFF_LD + s * 512 + pt * 4, r < Nq ? lg + r : lg, r < Nq ? 4 : 0);
            cp_async_arrive(full + 8 * s);
        }
        asm volatile("cp.async.wait_all;" ::: "memory");
    } else {  // consumers
        setmaxnreg_inc<CREG>();
        const int c = wg - 1, ct_ = tid & 127, warp = ct_ >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
        const int kr0 = j0 + c * 64 + warp * 16 + g;  // key rows of the accumulators' c0,c1 (kr0), c2,c3 (kr0 + 8)
        const float sl2 = scale * LOG2E;
        const int rel = lane == 0;
        const u64 dKa0 = desc_sw128(sK + c * 64 * 128, 16, 1024);  // this consumer's 64 keys, K-major A
        const u64 dVa0 = desc_sw128(sV + c * 64 * 128, 16, 1024);
        // dQ's B, K read MN-major: all 128 keys of columns 64c.. (MODE 6: keys 64c.. of columns 0..63;
        // columns 64.. are KT/2 bytes on)
        constexpr bool OWNQ = MODE == 6 || MODE == 7;  // each consumer its own keys' dQ
        const u64 dKb0 = OWNQ ? desc_sw128(sK + c * 64 * 128, KT / 2, 1024) : desc_sw128(sK + c * (KT / 2), KT / 2, 1024);
        const bool wantQ = dQacc != nullptr;
        const u32 dqs = sb + OFF_DQ + c * DQS;  // this consumer's dQ staging
        float dv[HD / 8][4], dk[HD / 8][4];
#pragma unroll
        for (int n = 0; n < HD / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) dv[n][e] = dk[n][e] = 0.f;

        mbar_wait(fullKV, 0);
        for (int it = 0; it < nit; ++it) {
            const int s = it & 1, qt = qtile(it), i0 = qt * BRQ;
            mbar_wait(full + 8 * s, (it >> 1) & 1);
            fence_proxy_async();
            const u32 sQs = sQ + s * QT, sdOs = sdO + s * QT;
            const u64 dQb = desc_sw128(sQs, 16, 1024), dOb = desc_sw128(sdOs, 16, 1024);
            u64 dKa = dKa0, dVa = dVa0, dKb = dKb0;
            if (OPQ) asm volatile("" : "+l"(dKa), "+l"(dVa), "+l"(dKb));
            const u32 LDs = sb + OFF_LD + s * 512;  // lse_i (64 fp32), then D_i
            const bool need_mask = i0 + BRQ > Nq || j0 + BC > Nk || (ct > 0 && i0 < imask);
            const u32 dsrow = sdS + s * QT + (c * 64 + warp * 16 + g) * 128 + 4 * tq;  // dSᵀ row r; r + 8 is +1 KB
            u32 pa[4][4], da[4][4];  // Pᵀ, dSᵀ as bf16 A fragments (k = the 64 queries)
            if (MODE == 0 || MODE == 5 || MODE == 7) {  // Sᵀ and dPᵀ in flight together (Sᵀ, dPᵀ, dK, dV live: 192 fp32)
                float st[8][4], dp[8][4];
                fence_regs(st);
                fence_regs(dp);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < HD / 16; ++kk) wgmma_ss64<0, 0>(st, dKa + kstep<128>(kk), dQb + kstep<BRQ>(kk), kk > 0);
                wgmma_commit();
#pragma unroll
                for (int kk = 0; kk < HD / 16; ++kk) wgmma_ss64<0, 0>(dp, dVa + kstep<128>(kk), dOb + kstep<BRQ>(kk), kk > 0);
                wgmma_commit();
                wgmma_wait<1>();  // Sᵀ landed; dPᵀ may still run
                fence_regs(st);
                bwd_p<8>(st, 0, LDs, sl2, need_mask, i0, kr0, Nq, Nk, ct, qoff, tq);
                wgmma_wait<0>();
                fence_regs(dp);
#pragma unroll
                for (int n = 0; n < 8; ++n) bwd_ds(pa, da, n, st[n][0], st[n][1], st[n][2], st[n][3], dp[n], LDs, dsrow, g, tq, wantQ);
            } else if (MODE == 1) {  // Sᵀ, then dPᵀ: Pᵀ is bf16 (16 registers) while dPᵀ runs
                float st[8][4];
                fence_regs(st);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < HD / 16; ++kk) wgmma_ss64<0, 0>(st, dKa + kstep<128>(kk), dQb + kstep<BRQ>(kk), kk > 0);
                wgmma_commit();
                wgmma_wait<0>();
                fence_regs(st);
                bwd_p<8>(st, 0, LDs, sl2, need_mask, i0, kr0, Nq, Nk, ct, qoff, tq);
#pragma unroll
                for (int n = 0; n < 8; ++n) {
                    pa[n >> 1][(n & 1) * 2] = pack_bf16(st[n][0], st[n][1]);
                    pa[n >> 1][(n & 1) * 2 + 1] = pack_bf16(st[n][2], st[n][3]);
                }
                float dp[8][4];
                fence_regs(dp);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < HD / 16; ++kk) wgmma_ss64<0, 0>(dp, dVa + kstep<128>(kk), dOb + kstep<BRQ>(kk), kk > 0);
                wgmma_commit();
                wgmma_wait<0>();
                fence_regs(dp);
#pragma unroll
                for (int n = 0; n < 8; ++n) {
                    const u32 a = pa[n >> 1][(n & 1) * 2], b = pa[n >> 1][(n & 1) * 2 + 1];
                    bwd_ds(pa, da, n, bf2f(a & 0xffff), bf2f(a >> 16), bf2f(b & 0xffff), bf2f(b >> 16), dp[n], LDs, dsrow, g, tq, wantQ);
                }
            } else {  // two halves of 32 queries (m64n32): Sᵀ, dPᵀ of one half live at a time, Pᵀ fp32
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    float sh[4][4], dh[4][4];
                    const u64 hb = (u64)((hh * 32 * 128) >> 4);  // rows 32·hh.. of the Q, dO tiles
                    fence_regs(sh);
                    fence_regs(dh);
                    wgmma_fence();
#pragma unroll
                    for (int kk = 0; kk < HD / 16; ++kk) wgmma_ss32(sh, dKa + kstep<128>(kk), dQb + hb + kstep<BRQ>(kk), kk > 0);
                    wgmma_commit();
#pragma unroll
                    for (int kk = 0; kk < HD / 16; ++kk) wgmma_ss32(dh, dVa + kstep<128>(kk), dOb + hb + kstep<BRQ>(kk), kk > 0);
                    wgmma_commit();
                    wgmma_wait<1>();
                    fence_regs(sh);
                    bwd_p<4>(sh, hh * 4, LDs, sl2, need_mask, i0, kr0, Nq, Nk, ct, qoff, tq);
                    wgmma_wait<0>();
                    fence_regs(dh);
#pragma unroll
                    for (int n = 0; n < 4; ++n) bwd_ds(pa, da, hh * 4 + n, sh[n][0], sh[n][1], sh[n][2], sh[n][3], dh[n], LDs, dsrow, g, tq, wantQ);
                }
            }
            // dV_c += Pᵀ dO_i, dK_c += dSᵀ Q_i (RS; dO and Q read MN-major: 16 queries = 2 KB)
            constexpr bool FA3ORDER = MODE == 4 || MODE == 5;
            fence_regs(pa);
            fence_regs(da);
            fence_regs(dv);
            fence_regs(dk);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BRQ / 16; ++kk) wgmma_rs<1>(dv, pa[kk], desc_sw128(sdOs, QT / 2, 1024) + (u64)((kk * 2048) >> 4), 1);
            if (FA3ORDER) wgmma_commit();
#pragma unroll
            for (int kk = 0; kk < BRQ / 16; ++kk) wgmma_rs<1>(dk, da[kk], desc_sw128(sQs, QT / 2, 1024) + (u64)((kk * 2048) >> 4), 1);
            wgmma_commit();
            // dQ[:, 64·half..] of this tile from the accumulators dq, the way DQT says
            auto dq_out = [&](const float (&dq)[8][4], int half) {
                if (DQT == 0) {
                    bwd_dq_tile(dq, dqs, dQacc + (((ll)b * H + h) * nqt_all + qt) * 8192 + half * 4096, scale, ct_, warp, lane, 2 + c);
                } else {
                    float *dst = dQacc + ((ll)b * Nq + i0) * ldg + (ll)h * HD + half * 64;  // dQ[b, i0, h, 64·half]
                    if (DQT == 1) bwd_dq_out(dq, dqs, dst, ldg, imin(BRQ, Nq - i0), scale, ct_, warp, g, tq, 2 + c);
                    else bwd_dq_red(dq, dqs, dst, ldg, imin(BRQ, Nq - i0), scale, ct_, warp, g, tq, 2 + c);
                }
            };
            // dQ_i[:, 64c..] = dS_i K_c over all 128 keys (SS: dSᵀ of both consumers, K read MN-major),
            // issued and committed, not waited for
            auto issue_dq = [&](float (&dq)[8][4]) {
                fence_regs(dq);
                wgmma_fence();
                const u64 dSa = desc_sw128(sdS + s * QT, QT, 1024);
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk)
                    wgmma_ss64<1, 1>(dq, dSa + (u64)((kk * 2048) >> 4), dKb + (u64)((kk * 2048) >> 4), kk > 0);
                wgmma_commit();
            };
            float dq[8][4];
            if (FA3ORDER) {
                if (wantQ) {
                    fence_proxy_async();  // the dSᵀ stores, for the wgmma's async proxy
                    wgmma_wait<1>();      // dV done: Pᵀ's fragments free before dQ's accumulators
                    fence_regs(dv);
                    fence_regs(pa);
                    bar_sync(1, 256);  // both consumers' halves of dSᵀ are in
                    issue_dq(dq);
                    wgmma_wait<1>();  // dK done; dQ may still run
                    fence_regs(dk);
                    fence_regs(da);
                    mbar_arrive_if(empty + 8 * s, rel);  // Q_i, dO_i, lse_i, D_i are free
                    wgmma_wait<0>();
                    fence_regs(dq);
                    dq_out(dq, c);
                } else {
                    wgmma_wait<0>();
                    fence_regs(dv);
                    fence_regs(dk);
                    fence_regs(pa);
                    fence_regs(da);
                    mbar_arrive_if(empty + 8 * s, rel);
                }
            } else if (OWNQ) {
                wgmma_wait<0>();
                fence_regs(dv);
                fence_regs(dk);
                fence_regs(pa);
                fence_regs(da);
                mbar_arrive_if(empty + 8 * s, rel);  // Q_i, dO_i, lse_i, D_i are free
                if (wantQ) {
                    fence_proxy_async();
                    bar_sync(2 + c, 128);  // this consumer's dSᵀ rows are in
                    const u64 dSa = desc_sw128(sdS + s * QT + c * 64 * 128, QT, 1024);
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh) {
                        fence_regs(dq);
                        wgmma_fence();
#pragma unroll
                        for (int kk = 0; kk < 4; ++kk)
                            wgmma_ss64<1, 1>(dq, dSa + (u64)((kk * 2048) >> 4), dKb + (u64)((hh * (KT / 2) + kk * 2048) >> 4), kk > 0);
                        wgmma_commit();
                        wgmma_wait<0>();
                        fence_regs(dq);
                        dq_out(dq, hh);
                    }
                }
            } else {
                if (wantQ) {
                    fence_proxy_async();  // the dSᵀ stores, for the wgmma's async proxy
                    if (MODE != 0) {      // dV, dK done first: their A fragments free before dQ's accumulators
                        wgmma_wait<0>();
                        fence_regs(dv);
                        fence_regs(dk);
                        fence_regs(pa);
                        fence_regs(da);
                    }
                    bar_sync(1, 256);  // both consumers' halves of dSᵀ are in
                    issue_dq(dq);
                }
                wgmma_wait<0>();
                fence_regs(dv);
                fence_regs(dk);
                fence_regs(pa);
                fence_regs(da);
                mbar_arrive_if(empty + 8 * s, rel);  // Q_i, dO_i, lse_i, D_i are free
                if (wantQ) {
                    fence_regs(dq);
                    dq_out(dq, c);
                }
            }
        }
        if (wantQ && (DQT == 0 ? ct_ == 0 : DQT == 1 && ct_ < BRQ))
            asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");  // the staging outlives its reads
        bwd_store_dkdv<HD, G>(dK, dV, dk, dv, b, h, kr0, Nk, ldg, tq, scale, qsplit);
    }
#else
    asm volatile("trap;");  // sm_90a only: attention.go launches it on compute capability 9.0 alone
#endif
}
// 384 threads (a producer and two consumer warpgroups), one block per 128-key tile (× qsplit);
// shared memory 1024 + 5·32 KB + 2·18 KB + 1 KB + 40 bytes (attention.go attnBwdSm90Smem). dQacc: the
// fp32 dQ scratch of bwd_dq_tile (DQT 0), or an fp32 dQ [B,Nq,H,128] (DQT 1, 2).
#define BWD3(G, PREG, CREG, OPQ, MODE, ROT, DQT, NAME)                                                                  \
    extern "C" __global__ void __launch_bounds__(384, 1)                                                           \
        NAME(G *dK, G *dV, float *dQacc, const bf16_t *dO, const float *lse, const float *D, const bf16_t *q,     \
             const bf16_t *k, const bf16_t *v, int Nq, int Nk, int H, int ct, int qoff, float scale, int qsplit) { \
        attn_bwd_sm90_body<G, PREG, CREG, OPQ, MODE, ROT, DQT>(dK, dV, dQacc, dO, lse, D, q, k, v, Nq, Nk, H, ct, qoff, scale, qsplit); \
    }
BWD3(float, 24, 240, true, 5, false, 0, attn_bwd_hd128_bf16_gf32_sm90)
BWD3(bf16_t, 24, 240, true, 5, false, 0, attn_bwd_hd128_bf16_gbf16_sm90)
// Split key tiles (attention.go attnBwdSplit > 1: the cross-attention, fp32 gradients): dQ straight
// into dQ by red.global.add.v4 (DQT 2), no scratch, memset or finishing pass (ATTENTION_NOTES v8).
BWD3(float, 24, 240, true, 5, false, 2, attn_bwd_hd128_bf16_gf32_sm90_rq)

// dst [B,Nq,H,128] (storage dtype dt) += src, the sm_90a backward's dQ scratch: per (b, h), ⌈Nq/64⌉
// tiles of 64 queries × 128 columns, each in the consumers' register order: consumer c (columns
// 64c..), warp w (rows 16w..), n-block n (columns 8n..), lane 4g + tq, then the four accumulators
// (row g or g + 8) × (column 2tq or 2tq + 1).
extern "C" __global__ void attn_dq_finish_sm90(void *dst, int dt, const float *src, int Nq, int H, ll n) {
    const ll nqt = (Nq + 63) / 64;
    GRID_STRIDE(x, n) {
        const int d = (int)(x & 127);
        const ll row = x >> 7;
        const int h = (int)(row % H);
        const ll bi = row / H;
        const int i = (int)(bi % Nq);
        const ll b = bi / Nq;
        const int ri = i & 63, w = ri >> 4, g = ri & 7, hi = (ri >> 3) & 1;
        const int c = d >> 6, nb = (d >> 3) & 7, tq = (d >> 1) & 3, e = d & 1;
        const ll idx = ((b * H + h) * nqt + (i >> 6)) * 8192 + ((((c * 4 + w) * 8 + nb) * 32 + g * 4 + tq) << 2) + hi * 2 + e;
        st(dst, x, dt, ld(dst, x, dt) + src[idx]);
    }
}
