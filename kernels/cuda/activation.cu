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
struct alignas(16) f32x4 { float x, y, z, w; };
struct alignas(8) bf16x4 { unsigned short x, y, z, w; };

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
