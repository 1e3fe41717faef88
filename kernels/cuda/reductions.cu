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
