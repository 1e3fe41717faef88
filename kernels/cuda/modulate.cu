// adaLN modulation and the gated residual, per frame: token n of [B,N,D] belongs to frame
// f = n / tokensPerFrame and takes its (shift, scale, gate) rows from mod [B,F,K,D].
#include "common.cuh"

// out = x·(1 + mod[b,f,iScale]) + mod[b,f,iShift]
extern "C" __global__ void mod_fwd(void *out, int dto, const void *x, int dtx, const void *mod, int dtm,
                                   int iShift, int iScale, ll N, ll D, int F, int K, ll tpf, ll n) {
    GRID_STRIDE(i, n) {
        ll d = i % D, tok = i / D, b = tok / N, f = (tok % N) / tpf;
        ll m = ((b * F + f) * K) * D + d;
        st(out, i, dto, ld(x, i, dtx) * (1.f + ld(mod, m + iScale * D, dtm)) + ld(mod, m + iShift * D, dtm));
    }
}

// dX += dOut·(1 + scale); the dMod slices are column reductions done by colreduce.
extern "C" __global__ void mod_bwd_x(void *dX, int dtdx, const void *dOut, int dtdo, const void *mod, int dtm,
                                     int iScale, ll N, ll D, int F, int K, ll tpf, ll n) {
    GRID_STRIDE(i, n) {
        ll d = i % D, tok = i / D, b = tok / N, f = (tok % N) / tpf;
        ll m = ((b * F + f) * K + iScale) * D + d;
        st(dX, i, dtdx, ld(dX, i, dtdx) + ld(dOut, i, dtdo) * (1.f + ld(mod, m, dtm)));
    }
}

// x += y·mod[b,f,iGate] (gateMul = 1), or, for the backward, dY += dX·gate (same form).
extern "C" __global__ void gate_add(void *x, int dtx, const void *y, int dty, const void *mod, int dtm,
                                    int iGate, ll N, ll D, int F, int K, ll tpf, ll n) {
    GRID_STRIDE(i, n) {
        ll d = i % D, tok = i / D, b = tok / N, f = (tok % N) / tpf;
        ll m = ((b * F + f) * K + iGate) * D + d;
        st(x, i, dtx, ld(x, i, dtx) + ld(y, i, dty) * ld(mod, m, dtm));
    }
}
