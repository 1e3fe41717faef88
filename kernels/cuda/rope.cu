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

// The angle tables of rope_apply_tab: tf[p·nf + j] = (cos, sin)(p·10000^(−j/nf)) for positions p < P,
// th likewise with nh pairs (rows and columns share it). Built once per head dim and grown as
// positions grow; float64 angles as above.
extern "C" __global__ void rope_table(float *tf, float *th, int P, int nf, int nh) {
    ll n = (ll)P * (nf + nh);
    GRID_STRIDE(i, n) {
        int a = (int)(i / P), p = (int)(i % P);
        int na = a < nf ? nf : nh, j = a < nf ? a : a - nf;
        double ang = (double)p * pow(10000.0, -(double)j / (double)na), s, c;
        sincos(ang, &s, &c);
        float *t = a < nf ? tf + 2 * ((ll)p * nf + j) : th + 2 * ((ll)p * nh + j);
        t[0] = (float)c;
        t[1] = (float)s;
    }
}

// rope_apply with the tables: memory-bound instead of bound by float64 pow/sincos per element.
// sh, when not null, gets a bf16 copy of the rotated x (the fused attention's operand).
extern "C" __global__ void rope_apply_tab(void *x, int dt, void *sh, const float *tf, const float *th, int N, int H, int hd,
                                          int rows, int cols, int frame0, float sign, ll n) {
    int c = hd / 2, nh = c / 3, nf = c - 2 * nh;
    unsigned hw = (unsigned)rows * cols;
    GRID_STRIDE_I(unsigned, i, n) {
        unsigned j = i % c, t = (i / c / H) % N;
        unsigned f = t / hw, r = (t / cols) % rows, w = t % cols;
        const float *e;
        if (j < (unsigned)nf) e = tf + 2 * ((frame0 + f) * nf + j);
        else if (j < (unsigned)(nf + nh)) e = th + 2 * (r * nh + j - nf);
        else e = th + 2 * (w * nh + j - nf - nh);
        float co = e[0], s = e[1] * sign;
        unsigned p = (i / c) * hd + 2 * j;
        float a = ld(x, p, dt), b = ld(x, p + 1, dt);
        float y0 = a * co - b * s, y1 = a * s + b * co;
        st(x, p, dt, y0);
        st(x, p + 1, dt, y1);
        if (sh) {
            st(sh, p, 1, y0);
            st(sh, p + 1, 1, y1);
        }
    }
}
