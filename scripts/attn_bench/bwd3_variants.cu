// Candidates for the sm_90a backward of kernels/cuda/attention.cu (ATTENTION_NOTES v8), one per build
// so that they compile in parallel: nvcc -DBWD3V=N ... -o bwd3v_<name>.cubin (bwd3_run.sh; the
// harness, attn_bench.py, loads every bwd3v_*.cubin of its build folder). Each includes the shipped
// source, so it shares attn_bwd_sm90_body and its helpers.
#include "attention.cu"

#if BWD3V == 1
BWD3(float, 24, 240, true, 2, true, attn_bwd3v_m2r)  // shipped MODE 2, rotated query order
#elif BWD3V == 2
BWD3(float, 24, 240, true, 4, true, attn_bwd3v_m4r)  // halves, then FA3's order: dV; meet; dQ under dK
#elif BWD3V == 3
BWD3(float, 24, 240, true, 5, true, attn_bwd3v_m5r)  // MODE 4 with Sᵀ, dPᵀ whole (m64n64) and together
#elif BWD3V == 4
BWD3(float, 24, 240, true, 6, true, attn_bwd3v_m6r)  // no meeting: each consumer its own keys' dQ
#elif BWD3V == 5
BWD3(float, 24, 240, true, 6, false, attn_bwd3v_m6)  // MODE 6 in order
#elif BWD3V == 6
BWD3(float, 24, 240, true, 4, false, attn_bwd3v_m4)  // MODE 4 in order
#endif
