// The gated optimizer kernels of optim.cu (step_gate, adamw_gated, adamw_gated_f32x4, ema_gated)
// on the host: the gate against its definition (kernels/gate.go), the gated AdamW against Scale
// then AdamW written out here (bit for bit), a skipped step leaving everything untouched. The GPU
// test is kernels/cuda TestGatedOptimizerAgainstCPU.
#include "shim.h"
#include "../../kernels/cuda/optim.cu"
#include "common_test.h"
static int countOf(const std::vector<float> &g, int i) { int c; memcpy(&c, &g[3 + 2 * i], 4); return c; }
static void setCount(std::vector<float> &g, int i, int c) { memcpy(&g[3 + 2 * i], &c, 4); }
static void gate(std::vector<double> acc, unsigned mask, int R, double clip, int hostOK, bool wantOK, const char *name) {
    std::vector<float> g(2 + 2 * R, 7.f);
    for (int i = 0; i < R; i++) setCount(g, i, 5 * i + 1);
    auto g0 = g;
    launch({1}, {32}, [&] { step_gate(g.data(), acc.data(), mask, R, (int)acc.size() - R, clip, hostOK); });
    bool ok = g[0] != 0;
    int bad = ok != wantOK;
    for (int i = 0; i < R; i++) {
        float wc = g0[2 + 2 * i]; int wn = countOf(g0, i);
        if ((mask >> i) & 1u) {
            double gn = std::sqrt(acc[i]);
            wc = (clip > 0 && gn > clip) ? (float)(clip / (gn + 1e-6)) : 1.f;
            if (wantOK) wn++;
        }
        if (memcmp(&wc, &g[2 + 2 * i], 4) || wn != countOf(g, i)) bad++;
    }
    printf("%-40s ok=%d %s\n", name, ok, bad ? "FAIL" : "ok");
    fails += bad != 0;
}
static void adam(int n, int off, bool vec, bool ok, float clip, int t, float b1) {
    auto w = randv(n + 8), g = randv(n + 8), m = randv(n + 8), v = randv(n + 8);
    for (auto &x : v) x = std::fabs(x) * 0.01f;
    if (b1 == 0) m = g;
    std::vector<float> gt = {ok ? 1.f : 0.f, 0, 1, 0, clip, 0};
    setCount(gt, 1, t);
    float lr = 3e-3f, b2 = 0.99f, eps = 1e-8f, wd = 0.1f, decay = 1 - lr * wd;
    // the reference: Scale(g, clip), then adamw at count t (kernels/cuda/ops.go's scalars)
    auto wr = w, mr = m, vr = v;
    if (ok) {
        float stepSize = (float)((double)lr / (1.0 - std::pow((double)b1, (double)t)));
        float rbc2 = (float)(1.0 / std::sqrt(1.0 - std::pow((double)b2, (double)t)));
        for (int i = off; i < off + n; i++) {
            float gi = g[i] * clip;
            float mi = b1 * mr[i] + (1.f - b1) * gi;  // β1 = 0: m is g, 0·g = 0
            float vi = b2 * vr[i] + (1.f - b2) * gi * gi;
            mr[i] = mi; vr[i] = vi;
            wr[i] = wr[i] * decay - stepSize * mi / (sqrtf(vi) * rbc2 + eps);
        }
    }
    float *M = b1 == 0 ? g.data() : m.data();
    if (vec) {
        int n4 = n / 4;  // off % 4 == 0 here; no head, the tail by the scalar kernel
        launch({3}, {64}, [&] { adamw_gated_f32x4((o_f4 *)(w.data() + off), (const o_f4 *)(g.data() + off), (o_f4 *)(M + off), (o_f4 *)(v.data() + off), gt.data(), 1, lr, b1, b2, eps, decay, n4); });
        if (n > 4 * n4) launch({1}, {64}, [&] { adamw_gated(w.data() + off + 4 * n4, 0, g.data() + off + 4 * n4, 0, M + off + 4 * n4, v.data() + off + 4 * n4, 0, gt.data(), 1, lr, b1, b2, eps, decay, n - 4 * n4); });
    } else {
        launch({2}, {64}, [&] { adamw_gated(w.data() + off, 0, g.data() + off, 0, M + off, v.data() + off, 0, gt.data(), 1, lr, b1, b2, eps, decay, n); });
    }
    char name[120];
    snprintf(name, sizeof name, "adamw n=%d off=%d vec=%d ok=%d clip=%g t=%d b1=%g: w", n, off, vec, ok, clip, t, b1);
    same(name, w, wr);
    same("  m", b1 == 0 ? g : m, mr);
    same("  v", v, vr);
}
int main() {
    double nan = NAN, inf = INFINITY;
    gate({4, 9, 16, 0.5}, 7, 3, 0, 1, true, "gate: clip off");
    gate({4.3, 0.01, 1e6, 0.5, 2}, 7, 3, 1.5, 1, true, "gate: clip on");
    gate({4, nan, 16}, 3, 3, 1, 1, false, "gate: NaN role");
    gate({4, 9, nan, 3}, 3, 3, 1, 1, true, "gate: NaN outside the mask");
    gate({4, 9, 16, 1, inf}, 1, 3, 1, 1, false, "gate: Inf deferred");
    gate({4, 9, 16}, 5, 3, 1, 0, false, "gate: host loss");
    for (bool vec : {false, true})
        for (bool ok : {true, false}) {
            adam(1001, 4, vec, ok, 0.37f, 5, 0.9f);
            adam(1001, 0, vec, ok, 1.f, 1, 0.9f);
            adam(203, 4, vec, ok, 0.5f, 3, 0.f);
        }
    auto e = randv(300), w = randv(300), e0 = e;
    std::vector<float> gt = {0, 0};
    launch({2}, {64}, [&] { ema_gated(e.data(), 0, w.data(), 0, gt.data(), 0.9f, 300); });
    same("ema skipped", e, e0);
    gt[0] = 1;
    launch({2}, {64}, [&] { ema_gated(e.data(), 0, w.data(), 0, gt.data(), 0.f, 300); });
    same("ema copy (decay 0)", e, w);
    printf("%d failures\n", fails); return fails != 0;
}
