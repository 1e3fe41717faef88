// Sinusoidal time embedding: out[m] = [cos(t·f), sin(t·f)], f_i = 10000^(−i/half), in float64.
#include "common.cuh"

extern "C" __global__ void sinusoid(void *out, int dto, const void *t, int dtt, int half, ll n) {
    GRID_STRIDE(i, n) {  // i over M·half
        ll m = i / half;
        int k = (int)(i % half);
        double a = (double)ld(t, m, dtt) * pow(10000.0, -(double)k / (double)half);
        double s, c;
        sincos(a, &s, &c);
        st(out, m * 2 * half + k, dto, (float)c);
        st(out, m * 2 * half + half + k, dto, (float)s);
    }
}
