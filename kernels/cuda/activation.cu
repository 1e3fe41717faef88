// GELU (tanh form, as Wan's nn.GELU(approximate="tanh")) and SiLU, forward and backward.
#include "common.cuh"

#define GELU_C 0.7978845608028654f  // √(2/π)

// sh, when not null, gets a bf16 copy of out (the next GEMM's operand).
extern "C" __global__ void act_gelu(void *out, int dto, void *sh, const void *in, int dti, ll n) {
    GRID_STRIDE(i, n) {
        float x = ld(in, i, dti);
        float u = GELU_C * (x + 0.044715f * x * x * x);
        float y = 0.5f * x * (1.f + tanhf(u));
        st(out, i, dto, y);
        if (sh) st(sh, i, 1, y);
    }
}

// dIn += dOut·gelu'(x)
extern "C" __global__ void act_gelu_back(void *dIn, int dti, const void *dOut, int dto, const void *in, int dtx, ll n) {
    GRID_STRIDE(i, n) {
        float x = ld(in, i, dtx);
        float u = GELU_C * (x + 0.044715f * x * x * x);
        float t = tanhf(u);
        float g = 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * GELU_C * (1.f + 3.f * 0.044715f * x * x);
        st(dIn, i, dti, ld(dIn, i, dti) + ld(dOut, i, dto) * g);
    }
}

extern "C" __global__ void act_silu(void *out, int dto, void *sh, const void *in, int dti, ll n) {
    GRID_STRIDE(i, n) {
        float x = ld(in, i, dti);
        float y = x / (1.f + expf(-x));
        st(out, i, dto, y);
        if (sh) st(sh, i, 1, y);
    }
}

// dIn += dOut·σ(x)(1 + x(1 − σ(x)))
extern "C" __global__ void act_silu_back(void *dIn, int dti, const void *dOut, int dto, const void *in, int dtx, ll n) {
    GRID_STRIDE(i, n) {
        float x = ld(in, i, dtx);
        float s = 1.f / (1.f + expf(-x));
        st(dIn, i, dti, ld(dIn, i, dti) + ld(dOut, i, dto) * s * (1.f + x * (1.f - s)));
    }
}

// The all-fp32 GELU, four elements per thread in 16-byte accesses (n4 = n/4; 16-byte aligned).

__device__ __forceinline__ float gelu1(float x) {
    return 0.5f * x * (1.f + tanhf(GELU_C * (x + 0.044715f * x * x * x)));
}

extern "C" __global__ void act_gelu_f32x4(f32x4 *out, bf16x4 *sh, const f32x4 *in, ll n4) {
    GRID_STRIDE(i, n4) {
        f32x4 v = in[i];
        f32x4 y = {gelu1(v.x), gelu1(v.y), gelu1(v.z), gelu1(v.w)};
        if (out) out[i] = y;
        if (sh) sh[i] = bf16x4{f2bf(y.x), f2bf(y.y), f2bf(y.z), f2bf(y.w)};
    }
}

// The all-fp32 GELU backward, four elements per thread: dIn += dOut·gelu'(x); sh, when not null,
// gets a bf16 copy of the new dIn (the next GEMM's operand).
__device__ __forceinline__ float gelu_grad1(float x) {
    float t = tanhf(GELU_C * (x + 0.044715f * x * x * x));
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * GELU_C * (1.f + 3.f * 0.044715f * x * x);
}

// acc 0: dIn = (not +=) the gradient, a zeroing folded in (kernels.LazyZeroer).
extern "C" __global__ void act_gelu_back_f32x4(f32x4 *dIn, bf16x4 *sh, const f32x4 *dOut, const f32x4 *in, int acc, ll n4) {
    GRID_STRIDE(i, n4) {
        f32x4 x = in[i], g = dOut[i], d = acc ? dIn[i] : f32x4{0.f, 0.f, 0.f, 0.f};
        d.x += g.x * gelu_grad1(x.x);
        d.y += g.y * gelu_grad1(x.y);
        d.z += g.z * gelu_grad1(x.z);
        d.w += g.w * gelu_grad1(x.w);
        dIn[i] = d;
        if (sh) sh[i] = bf16x4{f2bf(d.x), f2bf(d.y), f2bf(d.z), f2bf(d.w)};
    }
}

// The GELU backward of a bf16 pre-activation (a training pass whose GELU ran in the GEMM's epilogue,
// which stored the pre-activation in bf16) with the bias gradient of the layer that made it, in one
// pass over [rows, cols] (cols % 8 == 0, 16-byte aligned rows): dIn (+)= dOut·gelu'(in), bf16 in
// and out (acc 0: written, a zeroing folded in); bias[c] += Σ_r dIn[r, c] (fp32 atomics, the fp32
// values before their rounding to bf16; null: none). Block 32×8: 256 columns, 8 per thread in
// 16-byte accesses, rowsPerBlock rows (a multiple of 8) with four rows in flight.
struct alignas(16) bf16x8 { unsigned short v[8]; };

__device__ __forceinline__ void gelu_back_bias8(bf16x8 *dIn, const bf16x8 *dOut, const bf16x8 *in, ll i, int acc, float (&s)[8]) {
    bf16x8 g = dOut[i], x = in[i], d;
    bf16x8 o;
    if (acc) o = dIn[i];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        float v = bf2f(g.v[k]) * gelu_grad1(bf2f(x.v[k]));
        if (acc) v += bf2f(o.v[k]);
        s[k] += v;
        d.v[k] = f2bf(v);
    }
    dIn[i] = d;
}

extern "C" __global__ void act_gelu_back_bias_bf16x8(bf16x8 *dIn, float *bias, const bf16x8 *dOut, const bf16x8 *in, int acc,
                                                     ll rows, ll cols, int rowsPerBlock) {
    __shared__ float part[8][256];
    const ll C8 = cols / 8, c8 = (ll)blockIdx.x * 32 + threadIdx.x;  // this thread's eight columns
    ll r0 = (ll)blockIdx.y * rowsPerBlock, r1 = r0 + rowsPerBlock;
    if (r1 > rows) r1 = rows;
    float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (c8 < C8) {
        ll r = r0 + threadIdx.y;
        for (; r + 24 < r1; r += 32) {
            gelu_back_bias8(dIn, dOut, in, r * C8 + c8, acc, s);
            gelu_back_bias8(dIn, dOut, in, (r + 8) * C8 + c8, acc, s);
            gelu_back_bias8(dIn, dOut, in, (r + 16) * C8 + c8, acc, s);
            gelu_back_bias8(dIn, dOut, in, (r + 24) * C8 + c8, acc, s);
        }
        for (; r < r1; r += 8) gelu_back_bias8(dIn, dOut, in, r * C8 + c8, acc, s);
    }
    if (!bias) return;
#pragma unroll
    for (int k = 0; k < 8; k++) part[threadIdx.y][8 * threadIdx.x + k] = s[k];
    __syncthreads();
    const int t = threadIdx.y * 32 + threadIdx.x;  // column t of the block's 256
    const ll c = (ll)blockIdx.x * 256 + t;
    if (c < cols) {
        float v = 0.f;
        for (int k = 0; k < 8; k++) v += part[k][t];
        atomicAdd(&bias[c], v);
    }
}
