// Patch (1,2,2) embedding layout and its inverse (MODEL.md): patchify features (c, pt, ph, pw),
// unpatchify features (pt, ph, pw, c). Every element maps to exactly one element: no atomics.
#include "common.cuh"

// out[b, (f,h,w), c·4 + ph·2 + pw] = x[b, c, f, 2h+ph, 2w+pw]; back = 1: dX[...] += dOut[...].
extern "C" __global__ void patchify(void *out, int dto, const void *x, int dtx, int C, int F, int H, int W, int back, ll n) {
    int h2 = H / 2, w2 = W / 2;
    GRID_STRIDE(i, n) {  // i over out
        ll feat = i % (4 * C), tok = i / (4 * C);
        ll b = tok / ((ll)F * h2 * w2), t = tok % ((ll)F * h2 * w2);
        ll f = t / (h2 * w2), hh = (t / w2) % h2, ww = t % w2;
        ll c = feat / 4, ph = (feat / 2) % 2, pw = feat % 2;
        ll xi = (((b * C + c) * F + f) * H + 2 * hh + ph) * W + 2 * ww + pw;
        if (back) st((void *)x, xi, dtx, ld(x, xi, dtx) + ld(out, i, dto));
        else st(out, i, dto, ld(x, xi, dtx));
    }
}

// out[b, c, f, 2h+ph, 2w+pw] = in[b, (f,h,w), (ph·2+pw)·C + c]; back = 1: dIn[...] += dOut[...].
extern "C" __global__ void unpatchify(void *out, int dto, const void *in, int dti, int C, int F, int H, int W, int back, ll n) {
    int h2 = H / 2, w2 = W / 2;
    GRID_STRIDE(i, n) {  // i over out [B,C,F,H,W]
        ll x = i % W, y = (i / W) % H, f = (i / ((ll)W * H)) % F, c = (i / ((ll)W * H * F)) % C, b = i / ((ll)W * H * F * C);
        ll tok = (b * F + f) * h2 * w2 + (y / 2) * w2 + x / 2;
        ll ii = tok * 4 * C + ((y % 2) * 2 + x % 2) * C + c;
        if (back) st((void *)in, ii, dti, ld(in, ii, dti) + ld(out, i, dto));
        else st(out, i, dto, ld(in, ii, dti));
    }
}
