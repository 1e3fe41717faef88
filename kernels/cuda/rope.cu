// 3D RoPE (MODEL.md): head_dim hd = 2c; pairs split (c − 2⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋) over (frame, row, col);
// pair j of an axis with n pairs turns by pos·10000^(−j/n). Angles in float64.
#include "common.cuh"

// x [B, N, H, hd] rotated in place; sign = +1 forward, −1 for the backward (rotate back).
template <typename I>
__device__ __forceinline__ void rope_t(void *x, int dt, I N, I H, int hd, I rows, I cols, int frame0, float sign, ll n) {
    int c = hd / 2, nh = c / 3, nf = c - 2 * nh;
    GRID_STRIDE_I(I, i, n) {  // i over B·N·H·c pairs
        int j = (int)(i % (I)c);
        I tok = (i / (I)c) / H;
        I t = tok % N;
        I hw = rows * cols;
        I f = t / hw, r = (t / cols) % rows, w = t % cols;
        double pos;
        int jj, na;
        if (j < nf) { pos = (double)(frame0 + f); jj = j; na = nf; }
        else if (j < nf + nh) { pos = (double)r; jj = j - nf; na = nh; }
        else { pos = (double)w; jj = j - nf - nh; na = nh; }
        double ang = pos * pow(10000.0, -(double)jj / (double)na);
        double sn, cs;
        sincos(ang, &sn, &cs);
        float s = (float)sn * sign, co = (float)cs;
        I p = (i / (I)c) * (I)hd + 2 * j;
        float a = ld(x, p, dt), b = ld(x, p + 1, dt);
        st(x, p, dt, a * co - b * s);
        st(x, p + 1, dt, a * s + b * co);
    }
}
extern "C" __global__ void rope_apply(void *x, int dt, ll N, int H, int hd, int rows, int cols, int frame0,
                                      float sign, ll n) {
    if (FITS32(2 * n)) rope_t<unsigned>(x, dt, (unsigned)N, H, hd, rows, cols, frame0, sign, n);
    else rope_t<ll>(x, dt, N, H, hd, rows, cols, frame0, sign, n);
}
