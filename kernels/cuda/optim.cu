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

// ema = decay·ema + (1 − decay)·w
extern "C" __global__ void ema(void *e, int dte, const void *w, int dtw, float decay, ll n) {
    GRID_STRIDE(i, n) st(e, i, dte, decay * ld(e, i, dte) + (1.f - decay) * ld(w, i, dtw));
}
