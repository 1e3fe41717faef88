#include "shim.h"
#include "../../kernels/cuda/layernorm.cu"
#include "common_test.h"
void run(int B, int F, int tpf, int D, int sms, bool modCase) {
    int N = F * tpf, rows = B * N, K = 6, iScale = 4, iShift = 3, D4 = D / 4;
    auto x = randv((size_t)rows * D), dOut = randv((size_t)rows * D), dX0 = randv((size_t)rows * D), mod = randv((size_t)B * F * K * D), w = randv(D);
    std::vector<float> mean(rows), rstd(rows);
    for (int r = 0; r < rows; r++) { double s = 0, q = 0; for (int c = 0; c < D; c++) s += x[r * D + c]; s /= D; for (int c = 0; c < D; c++) q += (x[r * D + c] - s) * (x[r * D + c] - s); mean[r] = s; rstd[r] = 1 / std::sqrt(q / D + 1e-6); }
    const float *mp = modCase ? mod.data() : nullptr; const f32x4 *wp = modCase ? nullptr : (const f32x4 *)w.data();
    int T = vecRow(D);
    auto dXref = dX0;
    launch({unsigned(rows)}, {unsigned(T)}, [&] { ln_bwd_f32x4((f32x4 *)dXref.data(), (const f32x4 *)dOut.data(), (const f32x4 *)x.data(), mean.data(), rstd.data(), wp, mp, iScale, N, F, K, tpf, D); });
    int rpb, g; sumRows(rows, sms, 4, rpb, g);
    auto dX = dX0; std::vector<float> acc(modCase ? (size_t)B * F * K * D : 2 * D), dB(D); auto acc0 = randv(acc.size()), dB0 = randv(D); acc = acc0; dB = dB0;
    std::vector<unsigned short> sh((size_t)rows * D);
    float *accXh = modCase ? acc.data() + iScale * D : acc.data(), *acc1 = modCase ? acc.data() + iShift * D : acc.data() + D;
    long long stride = modCase ? K * D : 0; int segRows = modCase ? tpf : rows;
    launch({unsigned(g)}, {unsigned(T)}, [&] { ln_bwd_sums_f32x4((f32x4 *)dX.data(), (const f32x4 *)dOut.data(), (const f32x4 *)x.data(), mean.data(), rstd.data(), wp, mp, iScale, N, F, K, tpf, D, accXh, acc1, stride, segRows, dB.data(), (bf16x4 *)sh.data(), rows, rpb); });
    char name[200]; snprintf(name, sizeof name, "ln %s D=%d rows=%d rpb=%d: dX", modCase ? "mod" : "affine", D, rows, rpb);
    same(name, dX, dXref);
    std::vector<double> wacc(acc0.begin(), acc0.end()), wdB(dB0.begin(), dB0.end());
    for (int r = 0; r < rows; r++) {
        int seg = modCase ? r / tpf : 0;
        for (int c = 0; c < D; c++) {
            float xh = (x[r * D + c] - mean[r]) * rstd[r]; double go = dOut[r * D + c];
            size_t o = modCase ? (size_t)seg * K * D : 0;
            wacc[o + (accXh - acc.data()) + c] += go * xh; wacc[o + (acc1 - acc.data()) + c] += go; wdB[c] += dX[r * D + c];
        }
    }
    {
        std::vector<float> a1, b1; std::vector<double> a2, b2;
        for (size_t i = 0; i < acc.size(); i++) { size_t k = modCase ? (i / D) % K : i / D; bool isXh = modCase ? k == (size_t)iScale : k == 0; bool is1 = modCase ? k == (size_t)iShift : k == 1;
            if (isXh) { a1.push_back(acc[i]); a2.push_back(wacc[i]); } else if (is1) { b1.push_back(acc[i]); b2.push_back(wacc[i]); } else if (acc[i] != acc0[i]) { printf("  untouched slot %zu changed\n", i); fails++; break; } }
        cmp("  sum dOut*xh (weight/scale)", a1, a2, 1e-6); cmp("  sum dOut (bias/shift)", b1, b2, 1e-6);
    }
    cmp("  dB = sum dX", dB, wdB, 1e-6);
    std::vector<unsigned short> shw(sh.size()); for (size_t i = 0; i < sh.size(); i++) shw[i] = f2bf(dX[i]);
    sameU16("  bf16 copy", sh, shw);
}
int main() {
    run(2, 3, 37, 520, 132, true); run(2, 3, 37, 520, 5, true); run(1, 2, 50, 64, 3, true);
    run(2, 3, 37, 520, 132, false); run(2, 1, 100, 1536, 4, false); run(1, 1, 100, 1536, 4, true);
    printf("%d failures\n", fails); return fails != 0;
}
