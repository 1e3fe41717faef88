// Gaussian noise drawn on the device: Philox4x32-10 (Salmon et al., SC 2011) and Box–Muller, the
// layout and arithmetic of kernels/philox.go (the Go reference; kernels/cuda/random_test.go checks
// the uint32 words bit for bit and the normals against it).
#include "common.cuh"

#if defined(__clang__) && !defined(__NVCC__)
extern "C" __device__ double log(double);
extern "C" __device__ double sqrt(double);
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// Philox4x32-10 of the counter c under the key (k0, k1), in place.
__device__ __forceinline__ void philox4x32_10(unsigned c[4], unsigned k0, unsigned k1) {
#pragma unroll
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        unsigned long long p0 = (unsigned long long)PHILOX_M0 * c[0];  // (hi0, lo0)
        unsigned long long p1 = (unsigned long long)PHILOX_M1 * c[2];  // (hi1, lo1)
        unsigned n0 = (unsigned)(p1 >> 32) ^ c[1] ^ k0, n2 = (unsigned)(p0 >> 32) ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = (unsigned)p1;
        c[2] = n2;
        c[3] = (unsigned)p0;
    }
}

// Box–Muller in double, rounded once to float (kernels.BoxMuller): u1 an odd multiple of 2^-24 in
// (0, 1), u2 in [0, 1).
__device__ __forceinline__ void box_muller(unsigned x0, unsigned x1, float *z0, float *z1) {
    double u1 = (double)((x0 >> 8) | 1u) * 5.9604644775390625e-08;  // 2^-24
    double u2 = (double)(x1 >> 8) * 5.9604644775390625e-08;
    double r = sqrt(-2.0 * log(u1));
    double s, c;
    sincos(6.283185307179586 * u2, &s, &c);  // 2π as the float64 nearest, as Go's 2*math.Pi
    *z0 = (float)(r * c);
    *z1 = (float)(r * s);
}

// Up to MAXK slabs per launch, their keys by value (captured into CUDA graphs as values).
#define MAXK 64
struct Keys { unsigned long long k[MAXK]; };

// out: G slabs of per elements (dtype dt); thread g writes block q = g mod nq of slab b = g / nq:
// elements 4q..4q+3 from Philox4x32-10 of (q lo, q hi, counter lo, counter hi) under keys.k[b].
extern "C" __global__ void rand_normal_philox(void *out, int dt, Keys keys, unsigned long long counter,
                                              ll per, ll nq, ll n) {
    GRID_STRIDE(g, n) {
        ll b = g / nq, q = g - b * nq;
        unsigned long long key = keys.k[b];
        unsigned long long uq = (unsigned long long)q;
        unsigned c[4] = {(unsigned)uq, (unsigned)(uq >> 32), (unsigned)counter, (unsigned)(counter >> 32)};
        philox4x32_10(c, (unsigned)key, (unsigned)(key >> 32));
        float z[4];
        box_muller(c[0], c[1], &z[0], &z[1]);
        box_muller(c[2], c[3], &z[2], &z[3]);
        ll i0 = 4 * q, base = b * per + i0;
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (i0 + j < per) st(out, base + j, dt, z[j]);
    }
}

// The raw words, for the test against the Go Philox: out[4g..4g+3] = Philox4x32-10 of the counter
// (g lo, g hi, counter lo, counter hi) under key, g < n.
extern "C" __global__ void rand_philox_words(unsigned *out, unsigned long long key, unsigned long long counter, ll n) {
    GRID_STRIDE(g, n) {
        unsigned long long ug = (unsigned long long)g;
        unsigned c[4] = {(unsigned)ug, (unsigned)(ug >> 32), (unsigned)counter, (unsigned)(counter >> 32)};
        philox4x32_10(c, (unsigned)key, (unsigned)(key >> 32));
        for (int j = 0; j < 4; j++) out[4 * g + j] = c[j];
    }
}
