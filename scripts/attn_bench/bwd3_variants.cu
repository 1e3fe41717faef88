// Candidates for the sm_90a backward of kernels/cuda/attention.cu (ATTENTION_NOTES v8), one per build
// so that they compile in parallel: nvcc -DBWD3V=N ... -o bwd3v_<name>.cubin (bwd3_run.sh; the
// harness, attn_bench.py, loads every bwd3v_*.cubin of its build folder). Each includes the shipped
// source, so it shares attn_bwd_sm90_body and its helpers. BWD3: gradient type, producer / consumer
// setmaxnreg, opaque descriptors, MODE, ROT (rotated query order), DQT (how dQ leaves: 0 the tiled
// scratch, names *t; 1 a bulk reduction per row, *_d; 2 red.global.add.v4, *_v).
#include "attention.cu"

#if BWD3V == 1
BWD3(float, 24, 240, true, 2, false, 0, attn_bwd3v_m2t)  // v7's kernel (MODE 2) from this source
#elif BWD3V == 2
BWD3(float, 24, 240, true, 4, false, 0, attn_bwd3v_m4t)  // halves, then FA3's order: dV; meet; dQ under dK
#elif BWD3V == 3
BWD3(float, 24, 240, true, 5, true, 0, attn_bwd3v_m5tr)  // the shipped MODE 5, rotated query order
#elif BWD3V == 4
BWD3(float, 24, 240, true, 6, false, 0, attn_bwd3v_m6t)  // halves, no meeting: each consumer its own keys' dQ
#elif BWD3V == 5
BWD3(float, 24, 240, true, 7, false, 0, attn_bwd3v_m7t)  // MODE 5's Sᵀ, dPᵀ, no meeting
#elif BWD3V == 6
BWD3(float, 24, 240, true, 5, false, 1, attn_bwd3v_m5_d)  // MODE 5, dQ by a bulk reduction per row into dQ
#elif BWD3V == 7
BWD3(float, 24, 240, true, 5, false, 2, attn_bwd3v_m5_v)  // MODE 5, dQ by red.global.add.v4 into dQ
#elif BWD3V == 8
BWD3(float, 24, 240, true, 7, false, 2, attn_bwd3v_m7_v)  // MODE 7, dQ by red.global.add.v4 into dQ
#endif
