// Optimizer ops over whole parameter buffers: AdamW (decoupled decay, bias correction) and EMA.
#include "common.cuh"

// PyTorch's AdamW step, as the CPU device writes it: m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
// w = w·decay − stepSize·m/(√v·rbc2 + eps), decay = 1 − lr·wd, stepSize = lr/(1−β1^t), rbc2 = 1/√(1−β2^t).
extern "C" __global__ void adamw(void *w, int dtw, const void *g, int dtg, void *m, void *v, int dtm,
                                 float b1, float b2, float eps, float decay, float stepSize, float rbc2, ll n) {
    GRID_STRIDE(i, n) {
        float gi = ld(g, i, dtg);
        float mi = b1 * ld(m, i, dtm) + (1.f - b1) * gi;
        float vi = b2 * ld(v, i, dtm) + (1.f - b2) * gi * gi;
        st(m, i, dtm, mi);
        st(v, i, dtm, vi);
        st(w, i, dtw, ld(w, i, dtw) * decay - stepSize * mi / (sqrtf(vi) * rbc2 + eps));
    }
}

// adamw for fp32 w, g, m, v, four elements per thread in 16-byte accesses (n4 = n/4; 16-byte
// aligned): the same arithmetic per element as adamw.
struct alignas(16) o_f4 { float x, y, z, w; };

__device__ __forceinline__ void adamw1(float &w, float &m, float &v, float g, float b1, float b2, float eps,
                                       float decay, float stepSize, float rbc2) {
    m = b1 * m + (1.f - b1) * g;
    v = b2 * v + (1.f - b2) * g * g;
    w = w * decay - stepSize * m / (sqrtf(v) * rbc2 + eps);
}

extern "C" __global__ void adamw_f32x4(o_f4 *w, const o_f4 *g, o_f4 *m, o_f4 *v, float b1, float b2, float eps,
                                       float decay, float stepSize, float rbc2, ll n4) {
    GRID_STRIDE(i, n4) {
        o_f4 gi = g[i], mi = m[i], vi = v[i], wi = w[i];
        adamw1(wi.x, mi.x, vi.x, gi.x, b1, b2, eps, decay, stepSize, rbc2);
        adamw1(wi.y, mi.y, vi.y, gi.y, b1, b2, eps, decay, stepSize, rbc2);
        adamw1(wi.z, mi.z, vi.z, gi.z, b1, b2, eps, decay, stepSize, rbc2);
        adamw1(wi.w, mi.w, vi.w, gi.w, b1, b2, eps, decay, stepSize, rbc2);
        m[i] = mi;
        v[i] = vi;
        w[i] = wi;
    }
}

// ema = decay·ema + (1 − decay)·w
extern "C" __global__ void ema(void *e, int dte, const void *w, int dtw, float decay, ll n) {
    GRID_STRIDE(i, n) st(e, i, dte, decay * ld(e, i, dte) + (1.f - decay) * ld(w, i, dtw));
}

// ---------------------------------------------------------------------------------------------
// The optimizer step gated on the device (kernels/gate.go has the gate's layout; trainer/optim.go
// uses it): step_gate turns the step's float64 accumulators into the gate; adamw_gated* and
// ema_gated read it, so the step never waits for the host to decide.

#if defined(__clang__) && !defined(__NVCC__)
extern "C" __device__ double sqrt(double);
#endif

__device__ __forceinline__ bool finite64(double x) {
    union { double d; unsigned long long u; } c;
    c.d = x;
    return (c.u & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
}

// step_gate (one thread): gate[0] = ok = hostOK ∧ every acc[i] of a role in mask finite ∧ every
// deferred acc[roles … roles+deferred) finite; for each role in mask gate[2+2i] = its clip factor
// (trainer/optim.go's, in float64: clip/(√Σg² + 1e-6) when √Σg² > clip > 0, else 1) and, when ok,
// gate[3+2i] (an int) += 1.
extern "C" __global__ void step_gate(float *gate, const double *acc, unsigned mask, int roles, int deferred,
                                     double clip, int hostOK) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    bool ok = hostOK != 0;
    for (int i = 0; i < roles; i++)
        if ((mask >> i) & 1u) ok = ok && finite64(acc[i]);
    for (int j = roles; j < roles + deferred; j++) ok = ok && finite64(acc[j]);
    gate[0] = ok ? 1.f : 0.f;
    int *count = (int *)gate;
    for (int i = 0; i < roles; i++) {
        if (!((mask >> i) & 1u)) continue;
        double gn = sqrt(acc[i]);
        gate[2 + 2 * i] = (clip > 0 && gn > clip) ? (float)(clip / (gn + 1e-6)) : 1.f;
        if (ok) count[3 + 2 * i] += 1;
    }
}

// gated_scalars: role's clip factor and the bias-corrected scalars at its gate step count t
// (stepSize = lr/(1−β1^t), rbc2 = 1/√(1−β2^t), in float64 as the CPU's AdamW), computed once per
// block. Called by every thread of a block whose gate is ok (the early return before it is
// uniform: every thread reads the same gate[0]).
__device__ __forceinline__ void gated_scalars(const float *gate, int role, float lr, float b1, float b2, float &clip,
                                              float &stepSize, float &rbc2) {
    __shared__ float sc[2];
    if (threadIdx.x == 0) {
        int t = ((const int *)gate)[3 + 2 * role];
        double bc1 = 1.0 - pow((double)b1, (double)t);
        double bc2 = 1.0 - pow((double)b2, (double)t);
        sc[0] = (float)((double)lr / bc1);
        sc[1] = (float)(1.0 / sqrt(bc2));
    }
    __syncthreads();
    clip = gate[2 + 2 * role];
    stepSize = sc[0];
    rbc2 = sc[1];
}

// adamw_gated: adamw on g·clip at the gate's step count; nothing when the gate says skip.
extern "C" __global__ void adamw_gated(void *w, int dtw, const void *g, int dtg, void *m, void *v, int dtm,
                                       const float *gate, int role, float lr, float b1, float b2, float eps,
                                       float decay, ll n) {
    if (gate[0] == 0.f) return;
    float clip, stepSize, rbc2;
    gated_scalars(gate, role, lr, b1, b2, clip, stepSize, rbc2);
    GRID_STRIDE(i, n) {
        float gi = ld(g, i, dtg) * clip;
        float mi = b1 * ld(m, i, dtm) + (1.f - b1) * gi;
        float vi = b2 * ld(v, i, dtm) + (1.f - b2) * gi * gi;
        st(m, i, dtm, mi);
        st(v, i, dtm, vi);
        st(w, i, dtw, ld(w, i, dtw) * decay - stepSize * mi / (sqrtf(vi) * rbc2 + eps));
    }
}

// adamw_gated_f32x4: adamw_f32x4 gated as adamw_gated (n4 = n/4; 16-byte aligned).
extern "C" __global__ void adamw_gated_f32x4(o_f4 *w, const o_f4 *g, o_f4 *m, o_f4 *v, const float *gate, int role,
                                             float lr, float b1, float b2, float eps, float decay, ll n4) {
    if (gate[0] == 0.f) return;
    float clip, stepSize, rbc2;
    gated_scalars(gate, role, lr, b1, b2, clip, stepSize, rbc2);
    GRID_STRIDE(i, n4) {
        o_f4 gi = g[i], mi = m[i], vi = v[i], wi = w[i];
        adamw1(wi.x, mi.x, vi.x, gi.x * clip, b1, b2, eps, decay, stepSize, rbc2);
        adamw1(wi.y, mi.y, vi.y, gi.y * clip, b1, b2, eps, decay, stepSize, rbc2);
        adamw1(wi.z, mi.z, vi.z, gi.z * clip, b1, b2, eps, decay, stepSize, rbc2);
        adamw1(wi.w, mi.w, vi.w, gi.w * clip, b1, b2, eps, decay, stepSize, rbc2);
        m[i] = mi;
        v[i] = vi;
        w[i] = wi;
    }
}

// ema_gated: ema when the gate is ok (decay 0: a copy of w); nothing otherwise.
extern "C" __global__ void ema_gated(void *e, int dte, const void *w, int dtw, const float *gate, float decay, ll n) {
    if (gate[0] == 0.f) return;
    GRID_STRIDE(i, n) st(e, i, dte, decay == 0.f ? ld(w, i, dtw) : decay * ld(e, i, dte) + (1.f - decay) * ld(w, i, dtw));
}
