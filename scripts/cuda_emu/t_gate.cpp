#include "shim.h"
#include "../../kernels/cuda/modulate.cu"
#include "common_test.h"
void run(int B, int F, int tpf, int D, int sms, bool fresh, bool withMod, bool withB) {
    int N = F * tpf, rows = B * N, K = 6, iGate = 5, nseg = B * F;
    auto dX = randv((size_t)rows * D), y = randv((size_t)rows * D), dY0 = randv((size_t)rows * D), mod = randv((size_t)B * F * K * D);
    auto dMod0 = randv(mod.size()), dB0 = randv(D); auto dMod = dMod0, dB = dB0, dY = dY0;
    std::vector<unsigned short> sh((size_t)rows * D);
    // Go's gateAddBackSums grid
    int gx = (D + 127) / 128; int gy = std::max(1, std::min((8 * sms + gx * nseg - 1) / (gx * nseg), (tpf + 7) / 8));
    int rpb = (((tpf + gy - 1) / gy) + 7) & ~7; gy = (tpf + rpb - 1) / rpb;
    launch({unsigned(gx), unsigned(gy), unsigned(nseg)}, {32, 8}, [&] { gate_add_back_f32x4((f32x4 *)dY.data(), fresh ? nullptr : (const f32x4 *)dY.data(), (const f32x4 *)dX.data(), (const f32x4 *)y.data(), mod.data(), withMod ? dMod.data() : nullptr, iGate, K, tpf, D, rpb, withB ? dB.data() : nullptr, withB ? (bf16x4 *)sh.data() : nullptr); });
    std::vector<float> wY(dY.size()); std::vector<double> wMod(dMod0.begin(), dMod0.end()), wB(dB0.begin(), dB0.end());
    for (int r = 0; r < rows; r++) { int seg = r / tpf; for (int c = 0; c < D; c++) {
        float gt = mod[((size_t)seg * K + iGate) * D + c], u = dX[(size_t)r * D + c];
        float a = fresh ? 0.f : dY0[(size_t)r * D + c]; wY[(size_t)r * D + c] = a + u * gt;
        wMod[((size_t)seg * K + iGate) * D + c] += (double)u * y[(size_t)r * D + c]; wB[c] += wY[(size_t)r * D + c]; } }
    char name[200]; snprintf(name, sizeof name, "gate fresh=%d D=%d rows=%d segs=%d gy=%d rpb=%d: dY", fresh, D, rows, nseg, gy, rpb);
    same(name, dY, wY);
    if (withMod) cmp("  dMod (gate slice, others untouched)", dMod, wMod, 1e-6); else same("  dMod untouched", dMod, dMod0);
    if (withB) { cmp("  dB = sum dY", dB, wB, 1e-6); std::vector<unsigned short> shw(sh.size()); for (size_t i = 0; i < sh.size(); i++) shw[i] = f2bf(dY[i]); sameU16("  bf16 copy", sh, shw); }
    else same("  dB untouched", dB, dB0);
}
int main() {
    run(2, 3, 37, 520, 132, true, true, true); run(2, 3, 37, 520, 1, false, true, true); run(1, 1, 200, 1536, 2, true, true, false);
    run(1, 2, 50, 64, 3, false, false, true);
    printf("%d failures\n", fails); return fails != 0;
}
