// Elementwise ops over whole tensors: dtype conversion, fill, add, axpy, scale, the grouped
// combinations of the samplers and objectives, and the broadcast add of the modulation.
#include "common.cuh"

extern "C" __global__ void ew_convert(void *out, int dto, const void *in, int dti, ll n) {
    GRID_STRIDE(i, n) st(out, i, dto, ld(in, i, dti));
}

// fp32 ↔ bf16 four elements per thread (n4 = n/4; 16-byte aligned fp32, 8-byte aligned bf16).
extern "C" __global__ void ew_f32_to_bf16x4(bf16x4 *out, const f32x4 *in, ll n4) {
    GRID_STRIDE(i, n4) {
        f32x4 v = in[i];
        out[i] = bf16x4{f2bf(v.x), f2bf(v.y), f2bf(v.z), f2bf(v.w)};
    }
}
extern "C" __global__ void ew_bf16_to_f32x4(f32x4 *out, const bf16x4 *in, ll n4) {
    GRID_STRIDE(i, n4) {
        bf16x4 v = in[i];
        out[i] = f32x4{bf2f(v.x), bf2f(v.y), bf2f(v.z), bf2f(v.w)};
    }
}

extern "C" __global__ void ew_fill(void *out, int dt, float v, ll n) {
    GRID_STRIDE(i, n) st(out, i, dt, v);
}

// out = a + b
extern "C" __global__ void ew_add(void *out, int dto, const void *a, int dta, const void *b, int dtb, ll n) {
    GRID_STRIDE(i, n) st(out, i, dto, ld(a, i, dta) + ld(b, i, dtb));
}

// y += alpha·x
extern "C" __global__ void ew_axpy(void *y, int dty, float alpha, const void *x, int dtx, ll n) {
    GRID_STRIDE(i, n) st(y, i, dty, ld(y, i, dty) + alpha * ld(x, i, dtx));
}

// x *= alpha
extern "C" __global__ void ew_scale(void *x, int dt, float alpha, ll n) {
    GRID_STRIDE(i, n) st(x, i, dt, alpha * ld(x, i, dt));
}

// Coefficients by value (captured into CUDA graphs as values); MAXG groups at most.
#define MAXG 64
struct Coefs { float a[MAXG], b[MAXG]; };

// out = a_g·x + b_g·y, g = i / groupSize (G equal groups).
extern "C" __global__ void ew_combine(void *out, int dto, const void *x, int dtx, const void *y, int dty,
                                      Coefs c, ll groupSize, ll n) {
    GRID_STRIDE(i, n) {
        int g = (int)(i / groupSize);
        st(out, i, dto, c.a[g] * ld(x, i, dtx) + c.b[g] * ld(y, i, dty));
    }
}

// Video tensors [B,C,F,HW]: coefficient index b·F + f.
extern "C" __global__ void ew_combine_frames(void *out, int dto, const void *x, int dtx, const void *y, int dty,
                                             Coefs c, int C, int F, ll HW, ll n) {
    GRID_STRIDE(i, n) {
        ll f = (i / HW) % F, b = i / (HW * F * C);
        int g = (int)(b * F + f);
        st(out, i, dto, c.a[g] * ld(x, i, dtx) + c.b[g] * ld(y, i, dty));
    }
}

// Same with coefficients in device memory (more than MAXG groups).
extern "C" __global__ void ew_combine_frames_dev(void *out, int dto, const void *x, int dtx, const void *y, int dty,
                                                 const float *a, const float *b, ll groupSize, int C, int F, ll HW, ll n) {
    GRID_STRIDE(i, n) {
        ll g;
        if (groupSize > 0) g = i / groupSize;
        else g = (i / (HW * F * C)) * F + (i / HW) % F;
        st(out, i, dto, a[g] * ld(x, i, dtx) + b[g] * ld(y, i, dty));
    }
}

// out[m, j] = a[j] + b[m, j], j < KD (a broadcast over m).
extern "C" __global__ void ew_add_broadcast(void *out, int dto, const void *a, int dta, const void *b, int dtb, ll KD, ll n) {
    if (FITS32(n)) {
        GRID_STRIDE_I(unsigned, i, n) st(out, i, dto, ld(a, i % (unsigned)KD, dta) + ld(b, i, dtb));
    } else {
        GRID_STRIDE(i, n) st(out, i, dto, ld(a, i % KD, dta) + ld(b, i, dtb));
    }
}

// dst[s·stride + c] (+)= scale·acc[s·cols + c], s < nseg, c < cols: finishes a column reduction
// done in fp32 scratch into a (strided) tensor of any dtype.
extern "C" __global__ void ew_finalize(void *dst, int dt, const float *acc, ll nseg, ll stride, ll cols, float scale, int overwrite) {
    ll n = nseg * cols;
    GRID_STRIDE(i, n) {
        ll j = (i / cols) * stride + i % cols;
        float v = scale * acc[i];
        st(dst, j, dt, overwrite ? v : ld(dst, j, dt) + v);
    }
}

// dIn[b, n, d] += dOut[b, d] / N
extern "C" __global__ void ew_mean_tokens_back(void *dIn, int dti, const void *dOut, int dto, ll N, ll D, ll n) {
    float inv = 1.0f / (float)N;
    GRID_STRIDE(i, n) {
        ll b = i / (N * D), d = i % D;
        st(dIn, i, dti, ld(dIn, i, dti) + inv * ld(dOut, b * D + d, dto));
    }
}
