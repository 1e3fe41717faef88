#!/bin/sh
# Host emulation of the summing row kernels of colsums.go (kernels/cuda/NOTES.md v14), for a machine
# without a GPU: layernorm.cu, rmsnorm.cu and modulate.cu compiled as C++ (shim.h: one std::thread
# per CUDA thread, blocks one after another, __syncthreads a std::barrier, warp shuffles through a
# per-warp buffer, atomics under a mutex; the sm_90 red.v4 path is not compiled, its atomicAdd
# fallback is). Each test runs the summing kernel on random inputs with Go's grid (sumRows,
# gateAddBackSums) and checks it against the plain kernel (bit for bit) and double sums. This checks
# the kernels' logic only: cuda_test.go TestColumnSums is the test on the GPU.
# t_optim runs optim.cu's gated optimizer step (step_gate, adamw_gated*, ema_gated) against its
# definition and Scale-then-AdamW (bit for bit); on the GPU: gate_test.go TestGatedOptimizerAgainstCPU.
# t_random: random.cu's Philox against Random123's known answers, and its normals bit for bit
# against the Go reference (philox_ref.go; on the GPU: random_test.go TestRandnPhiloxAgainstGo).
set -e
cd "$(dirname "$0")"
out=${TMPDIR:-/tmp}/cuda_emu
mkdir -p "$out"
for t in t_ln t_rms t_gate t_optim; do
    g++ -std=c++20 -O2 -w -pthread -o "$out/$t" $t.cpp
    "$out/$t"
done
g++ -std=c++20 -O2 -w -pthread -o "$out/t_random" t_random.cpp
"$out/t_random" | tee "$out/t_random.txt"
grep -v 'philox4x32\|failures' "$out/t_random.txt" > "$out/t_random.bits"
go run philox_ref.go | diff "$out/t_random.bits" - && echo "random.cu normals: the Go reference's, bit for bit"
