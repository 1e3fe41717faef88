// Reductions: column sums over row segments (bias, LayerNorm/RMSNorm weight, modulation gradients,
// token means), the dot product and the grouped sums of |x| returned to the host in float64.
#include "common.cuh"

// colreduce: acc[s·accStride + c] += Σ_{r < segRows} term(s·segRows + r, c) for c < cols, s < gridDim.z,
// term by mode:
//   0: a[r,c]                             (bias gradient, broadcast-add backward, token sums)
//   1: a[r,c]·b[r,c]                      (modulation scale / gate gradients)
//   2: a[r,c]·(b[r,c] − mean[r])·rstd[r]  (LayerNorm weight gradient: dOut·x̂)
//   3: a[r,c]·b[r,c]·rstd[r]              (RMSNorm weight gradient)
// Rows of a and b are cols wide (row stride = cols). Block 32×8: 32 columns, 8 row lanes; the block
// covers rowsPerBlock rows of its segment and adds its partial sums into acc atomically.
extern "C" __global__ void colreduce(float *acc, ll accStride, const void *a, int dta, const void *b, int dtb,
                                     const void *mean, const void *rstd, int dts, ll segRows, ll cols,
                                     int rowsPerBlock, int mode) {
    __shared__ float sh[8][33];
    ll c = (ll)blockIdx.x * 32 + threadIdx.x;
    ll seg = blockIdx.z;
    ll r0 = (ll)blockIdx.y * rowsPerBlock;
    ll r1 = r0 + rowsPerBlock;
    if (r1 > segRows) r1 = segRows;
    float s = 0.f;
    if (c < cols) {
        for (ll r = r0 + threadIdx.y; r < r1; r += 8) {
            ll row = seg * segRows + r, i = row * cols + c;
            float v = ld(a, i, dta);
            if (mode == 1) v *= ld(b, i, dtb);
            else if (mode == 2) v *= (ld(b, i, dtb) - ld(mean, row, dts)) * ld(rstd, row, dts);
            else if (mode == 3) v *= ld(b, i, dtb) * ld(rstd, row, dts);
            s += v;
        }
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float t = 0.f;
        for (int k = 0; k < 8; k++) t += sh[k][threadIdx.x];
        atomicAdd(&acc[seg * accStride + c], t);
    }
}

// colreduce_f32x4: colreduce for fp32 tensors, cols % 4 == 0, 16-byte aligned a and b. Each thread
// sums four adjacent columns (16-byte loads, four rows in flight); block 32×8 covers 128 columns and
// rowsPerBlock rows (a multiple of 8) of its segment. acc0, when not null, also takes Σ a (mode 0's
// term) in the same pass: the bias next to a LayerNorm weight gradient, the shift next to the scale
// gradient of a modulation. mean and rstd are fp32 (or null when the mode does not read them).
// sh, when not null, gets a bf16 copy of a (same layout; the grid covers every element once): the
// bias gradient and the bf16 operand of the GEMMs of a Linear's backward from one read of dOut.

__device__ __forceinline__ void cr_add(f32x4 &s, f32x4 &s0, const float *a, const float *b, const float *mean,
                                       const float *rstd, unsigned short *sh, ll i, ll row, int mode, bool two) {
    f32x4 v = *(const f32x4 *)(a + i);
    if (sh) *(bf16x4 *)(sh + i) = bf16x4{f2bf(v.x), f2bf(v.y), f2bf(v.z), f2bf(v.w)};
    if (two) {
        s0.x += v.x; s0.y += v.y; s0.z += v.z; s0.w += v.w;
    }
    if (mode != 0) {
        f32x4 u = *(const f32x4 *)(b + i);
        float m = mode == 2 ? mean[row] : 0.f;
        float r = mode >= 2 ? rstd[row] : 1.f;
        v.x *= (u.x - m) * r; v.y *= (u.y - m) * r; v.z *= (u.z - m) * r; v.w *= (u.w - m) * r;
    }
    s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
}

extern "C" __global__ void colreduce_f32x4(float *acc, float *acc0, unsigned short *sh, ll accStride, const float *a, const float *b,
                                           const float *mean, const float *rstd, ll segRows, ll cols,
                                           int rowsPerBlock, int mode) {
    __shared__ float part[2][8][128];
    const bool two = acc0 != 0;
    ll c = (ll)blockIdx.x * 128 + 4 * threadIdx.x;  // first of this thread's four columns
    ll seg = blockIdx.z;
    ll r0 = (ll)blockIdx.y * rowsPerBlock;
    ll r1 = r0 + rowsPerBlock;
    if (r1 > segRows) r1 = segRows;
    f32x4 s = {0.f, 0.f, 0.f, 0.f}, s0 = {0.f, 0.f, 0.f, 0.f};
    if (c < cols) {
        ll r = r0 + threadIdx.y;
        for (; r + 24 < r1; r += 32) {  // four rows per step, their loads independent
            ll row = seg * segRows + r;
            cr_add(s, s0, a, b, mean, rstd, sh, row * cols + c, row, mode, two);
            cr_add(s, s0, a, b, mean, rstd, sh, (row + 8) * cols + c, row + 8, mode, two);
            cr_add(s, s0, a, b, mean, rstd, sh, (row + 16) * cols + c, row + 16, mode, two);
            cr_add(s, s0, a, b, mean, rstd, sh, (row + 24) * cols + c, row + 24, mode, two);
        }
        for (; r < r1; r += 8) {
            ll row = seg * segRows + r;
            cr_add(s, s0, a, b, mean, rstd, sh, row * cols + c, row, mode, two);
        }
    }
    int x4 = 4 * threadIdx.x;
    part[0][threadIdx.y][x4] = s.x;
    part[0][threadIdx.y][x4 + 1] = s.y;
    part[0][threadIdx.y][x4 + 2] = s.z;
    part[0][threadIdx.y][x4 + 3] = s.w;
    part[1][threadIdx.y][x4] = s0.x;
    part[1][threadIdx.y][x4 + 1] = s0.y;
    part[1][threadIdx.y][x4 + 2] = s0.z;
    part[1][threadIdx.y][x4 + 3] = s0.w;
    __syncthreads();
    // Thread t < 128 finishes column t of acc, thread 128 + t column t of acc0.
    int t = threadIdx.y * 32 + threadIdx.x, which = t >> 7, j = t & 127;
    ll cj = (ll)blockIdx.x * 128 + j;
    if (cj < cols && (which == 0 || two)) {
        float v = 0.f;
        for (int k = 0; k < 8; k++) v += part[which][k][j];
        atomicAdd(&(which == 0 ? acc : acc0)[seg * accStride + cj], v);
    }
}

// out[0] += Σ a·b in float64 (out zeroed by the caller).
extern "C" __global__ void red_dot(double *out, const void *a, int dta, const void *b, int dtb, ll n) {
    __shared__ double sh[32];
    double s = 0;
    GRID_STRIDE(i, n) s += (double)ld(a, i, dta) * (double)ld(b, i, dtb);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = s;
    __syncthreads();
    if (w == 0) {
        s = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) atomicAdd(out, s);
    }
}

// out[g] += Σ |x| over group g = blockIdx.y of groupSize elements (out zeroed by the caller).
extern "C" __global__ void red_sumabs(double *out, const void *x, int dt, ll groupSize) {
    __shared__ double sh[32];
    ll g = blockIdx.y;
    double s = 0;
    for (ll i = (ll)blockIdx.x * blockDim.x + threadIdx.x; i < groupSize; i += (ll)blockDim.x * gridDim.x)
        s += fabs((double)ld(x, g * groupSize + i, dt));
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = s;
    __syncthreads();
    if (w == 0) {
        s = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) atomicAdd(&out[g], s);
    }
}
