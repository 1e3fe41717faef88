// Shared helpers of the kernels in kernels/cuda/*.cu: dtype-generic loads and stores (storage fp32,
// bf16 or fp16; arithmetic always fp32), warp and block sums. No CUDA headers are needed: bf16 and
// fp16 conversions are written out here, so a file also compiles with clang -nocudainc for a syntax
// check on a machine without the CUDA toolkit.
#pragma once

#if defined(__clang__) && !defined(__NVCC__)
// clang -x cuda -nocudainc: declare what nvcc's headers would.
#define __device__ __attribute__((device))
#define __global__ __attribute__((global))
#define __shared__ __attribute__((shared))
#define __forceinline__ __attribute__((always_inline))
#include <__clang_cuda_builtin_vars.h>
extern "C" __device__ float expf(float);
extern "C" __device__ float tanhf(float);
extern "C" __device__ float sqrtf(float);
extern "C" __device__ float rsqrtf(float);
extern "C" __device__ float fabsf(float);
extern "C" __device__ float fmaxf(float, float);
extern "C" __device__ float logf(float);
extern "C" __device__ double pow(double, double);
extern "C" __device__ double exp(double);
extern "C" __device__ double fabs(double);
extern "C" __device__ void sincos(double, double *, double *);
extern "C" __device__ float __expf(float);
static __device__ inline float __shfl_xor_sync(unsigned m, float v, int o) { return __nvvm_shfl_sync_bfly_f32(m, v, o, 31); }
static __device__ inline double __shfl_xor_sync(unsigned m, double v, int o) {
    union { double d; int i[2]; } c;
    c.d = v;
    c.i[0] = __nvvm_shfl_sync_bfly_i32(m, c.i[0], o, 31);
    c.i[1] = __nvvm_shfl_sync_bfly_i32(m, c.i[1], o, 31);
    return c.d;
}
static __device__ inline float atomicAdd(float *p, float v) { return __nvvm_atom_add_gen_f(p, v); }
static __device__ inline double atomicAdd(double *p, double v) { return __nvvm_atom_add_gen_d(p, v); }
#define INFINITY __builtin_huge_valf()
#endif

typedef long long ll;

// 16-byte fp32 and 8-byte bf16 vectors of four (the fast paths' accesses; pointers 16/8-byte aligned).
struct alignas(16) f32x4 { float x, y, z, w; };
struct alignas(8) bf16x4 { unsigned short x, y, z, w; };

// red_add4: p[0..3] += v with one 16-byte reduction on sm_90 (p 16-byte aligned), else four atomics.
__device__ __forceinline__ void red_add4(float *p, f32x4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(NO_RED_V4)
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w) : "memory");
#else
    atomicAdd(p, v.x);
    atomicAdd(p + 1, v.y);
    atomicAdd(p + 2, v.z);
    atomicAdd(p + 3, v.w);
#endif
}

// Storage dtypes, as kernels.DType: 0 fp32, 1 bf16, 2 fp16.
__device__ __forceinline__ float bf2f(unsigned short h) {
    union { unsigned int u; float f; } c;
    c.u = ((unsigned int)h) << 16;
    return c.f;
}
__device__ __forceinline__ unsigned short f2bf(float f) {  // round to nearest even; NaN stays NaN
    union { unsigned int u; float f; } c;
    c.f = f;
    unsigned int u = c.u;
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float ld(const void *p, ll i, int dt) {
    if (dt == 0) return ((const float *)p)[i];
    unsigned short h = ((const unsigned short *)p)[i];
    return dt == 1 ? bf2f(h) : h2f(h);
}
__device__ __forceinline__ void st(void *p, ll i, int dt, float v) {
    if (dt == 0) ((float *)p)[i] = v;
    else ((unsigned short *)p)[i] = dt == 1 ? f2bf(v) : f2h(v);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// block_sum: every thread of the block gets the sum (blockDim.x a multiple of 32, ≤ 1024).
// sh must hold 32 floats; the block syncs inside.
__device__ __forceinline__ float block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.f;
    return warp_sum(t);
}

#define GRID_STRIDE(i, n) for (ll i = (ll)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (ll)blockDim.x * gridDim.x)

// Index arithmetic (/, %) in 32 bits when the sizes allow: 64-bit division costs ~20× more and
// makes the layout kernels compute-bound. GRID_STRIDE_I loops with an index of type I.
#define GRID_STRIDE_I(I, i, n) for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < (I)(n); i += (I)(blockDim.x * gridDim.x))
#define FITS32(n) ((n) < 0x7fffffffLL)
