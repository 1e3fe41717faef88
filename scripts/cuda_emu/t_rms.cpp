#include "shim.h"
#include "../../kernels/cuda/rmsnorm.cu"
#include "common_test.h"
void run(int B, int fr, int rows_, int cols_, int H, int hd, int sms, bool rope, bool fresh, bool withW) {
    int N = fr * rows_ * cols_, nrows = B * N, D = H * hd;
    auto x = randv((size_t)nrows * D), dOut0 = randv((size_t)nrows * D), dIn0 = randv((size_t)nrows * D), w = randv(D);
    auto tf = randv(4096), th = randv(4096);
    std::vector<float> rstd(nrows);
    for (int r = 0; r < nrows; r++) { double q = 0; for (int c = 0; c < D; c++) q += x[r * D + c] * x[r * D + c]; rstd[r] = 1 / std::sqrt(q / D + 1e-6); }
    int T = vecRow(D);
    const float *tfp = rope ? tf.data() : nullptr, *thp = rope ? th.data() : nullptr;
    auto dInRef = dIn0, dOutRef = dOut0;
    launch({unsigned(nrows)}, {unsigned(T)}, [&] { rms_bwd_f32x4((f32x4 *)dInRef.data(), (f32x4 *)dOutRef.data(), (const f32x4 *)x.data(), rstd.data(), (const f32x4 *)w.data(), D, !fresh, tfp, thp, N, hd, rows_, cols_, 2); });
    int rpb, g; sumRows(nrows, sms, 4, rpb, g);
    auto dIn = dIn0, dOut = dOut0, dW0 = randv(D), dB0 = randv(D); auto dW = dW0, dB = dB0;
    std::vector<unsigned short> sh((size_t)nrows * D);
    launch({unsigned(g)}, {unsigned(T)}, [&] { rms_bwd_sums_f32x4((f32x4 *)dIn.data(), (f32x4 *)dOut.data(), (const f32x4 *)x.data(), rstd.data(), (const f32x4 *)w.data(), D, !fresh, tfp, thp, N, hd, rows_, cols_, 2, withW ? dW.data() : nullptr, dB.data(), (bf16x4 *)sh.data(), nrows, rpb); });
    char name[200]; snprintf(name, sizeof name, "rms rope=%d fresh=%d D=%d rows=%d rpb=%d: dIn", rope, fresh, D, nrows, rpb);
    same(name, dIn, dInRef);
    same("  dOut rotated back", dOut, dOutRef);
    std::vector<double> wW(dW0.begin(), dW0.end()), wB(dB0.begin(), dB0.end());
    for (int r = 0; r < nrows; r++) for (int c = 0; c < D; c++) { float xh = x[r * D + c] * rstd[r]; wW[c] += (double)dOutRef[r * D + c] * xh; wB[c] += dIn[r * D + c]; }
    if (withW) cmp("  dW = sum dOut*xh", dW, wW, 1e-6); else same("  dW untouched", dW, dW0);
    cmp("  dB = sum dIn", dB, wB, 1e-6);
    std::vector<unsigned short> shw(sh.size()); for (size_t i = 0; i < sh.size(); i++) shw[i] = f2bf(dIn[i]);
    sameU16("  bf16 copy", sh, shw);
}
int main() {
    run(2, 3, 4, 5, 2, 128, 132, true, true, true); run(2, 3, 4, 5, 2, 128, 3, true, false, true);
    run(1, 2, 6, 7, 3, 12, 2, true, false, true); run(2, 2, 10, 10, 2, 260, 5, false, true, true); run(1, 3, 4, 5, 12, 128, 7, false, false, false);
    printf("%d failures\n", fails); return fails != 0;
}
