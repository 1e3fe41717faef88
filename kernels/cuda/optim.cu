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
