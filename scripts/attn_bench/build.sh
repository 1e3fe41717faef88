#!/usr/bin/env bash
# Builds kernels/cuda/attention.cu with nvcc (on a GPU machine: nvcc 13.0) into DIR (default $OUT or
# /tmp/attn_build): attention.fatbin (sm_90a cubin + compute_80 PTX, the form kernels/cuda/build/
# embeds), attention.sm90a.cubin (what the harness loads), attention_variants.sm90a.cubin (the shipped
# kernels and the tuning candidates of attention_variants.cu beside this script, which includes
# attention.cu) and attention.ptxas.txt (registers, spills per kernel).
# The vector fp32 reduction of the backward has two PTX spellings; the first that ptxas takes wins.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC=$ROOT/kernels/cuda/attention.cu
DIR=${1:-${OUT:-/tmp/attn_build}}
mkdir -p "$DIR"
NVCC=${NVCC:-nvcc}
FLAGS=(-std=c++17 -O3 -I"$ROOT/kernels/cuda")
SM90=(-gencode=arch=compute_90a,code=sm_90a)
for red in 1 2 0; do
    if $NVCC "${FLAGS[@]}" -DATTN_RED_V2=$red -cubin "${SM90[@]}" -Xptxas -v \
        -o "$DIR/attention.sm90a.cubin" "$SRC" 2>"$DIR/attention.ptxas.txt"; then
        echo "built sm_90a cubin with ATTN_RED_V2=$red"
        break
    fi
    echo "ATTN_RED_V2=$red refused:"; grep -i error "$DIR/attention.ptxas.txt" | head -5
    [ $red = 0 ] && exit 1
done
$NVCC "${FLAGS[@]}" -DATTN_RED_V2=$red -fatbin "${SM90[@]}" -gencode=arch=compute_80,code=compute_80 \
    -o "$DIR/attention.fatbin" "$SRC"
if [ "${ATTN_VARIANTS:-1}" = 1 ]; then
    $NVCC "${FLAGS[@]}" -DATTN_RED_V2=$red -cubin "${SM90[@]}" -Xptxas -v \
        -o "$DIR/attention_variants.sm90a.cubin" "$ROOT/scripts/attn_bench/attention_variants.cu" 2>>"$DIR/attention.ptxas.txt"
fi
grep -E "Compiling entry|registers|spill" "$DIR/attention.ptxas.txt" | sed 's/ptxas info    : //' | paste - - - |
    sed -E "s/Compiling entry function '([a-z0-9_]+)' for 'sm_90a'/\1/" | awk '{$1=$1};1' | sort -u || true
