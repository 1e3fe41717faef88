#!/bin/sh
# Builds kernels/cuda/*.cu into fatbins (sm_90a cubin + compute_80 PTX) with nvcc, on a GPU machine
# (nvcc 13.0 there; none on the development machine). Run from the repository root:
#   scripts/build-kernels.sh [OUTDIR]          (default $OUT/kernels, else kernels/cuda/build)
# It writes OUTDIR/<family>.fatbin, OUTDIR/MANIFEST (fatbin, SHA-256 of the sources, nvcc version),
# OUTDIR/resource-usage.txt (ptxas registers/shared memory/spills), and, when $OUT is set,
# $OUT/kernels.tgz of all of it (the device tool brings back at most 8 files). Copy the fatbins and
# MANIFEST into kernels/cuda/build and commit them; TestArtifactsFresh checks the hashes.
#
# A .cu may list fallback flag sets, tried in order if the plain build fails, as lines
#   // build-fallback: -DNAME=VALUE ...
#
# Without nvcc (the development machine), CHECK=clang scripts/build-kernels.sh compiles every .cu
# to PTX with clang (-nocudainc; common.cuh declares what CUDA's headers would) as a syntax and
# type check, and builds nothing.
set -eu
if [ "${CHECK:-}" = clang ]; then
    CLANG=${CLANG:-$(command -v clang-14 || command -v clang)}
    st=0
    for cu in kernels/cuda/*.cu; do
        "$CLANG" -x cuda -nocudainc -nocudalib --cuda-gpu-arch=sm_80 -Xclang -target-feature -Xclang +ptx70 \
            --cuda-device-only -S -O2 -Wall -o /dev/null "$cu" || { echo "clang check: $cu failed" >&2; st=1; }
    done
    exit $st
fi
src=kernels/cuda
out=${1:-${OUT:+$OUT/kernels}}
out=${out:-$src/build}
mkdir -p "$out"
NVCC=${NVCC:-nvcc}
ver=$($NVCC --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
arch="-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=compute_80"
hdrs=$(ls $src/*.cuh | LC_ALL=C sort)
echo "# fatbin sha256(source.cu + *.cuh sorted by name) nvcc: written by scripts/build-kernels.sh" > "$out/MANIFEST"
: > "$out/resource-usage.txt"
# build1 CU: one family's fatbin (the plain flags, then each build-fallback set); its MANIFEST line
# and resource report go to $out/NAME.manifest and $out/NAME.usage, merged in name order below.
build1() {
    cu=$1
    name=$(basename "$cu" .cu)
    hash=$(cat "$cu" $hdrs | sha256sum | cut -d' ' -f1)
    for flags in "" $(sed -n 's|^// build-fallback: *||p' "$cu" | tr ' ' '\001'); do
        flags=$(echo "$flags" | tr '\001' ' ')
        if $NVCC -fatbin -O3 -std=c++17 $arch $flags -Xptxas -v -o "$out/$name.fatbin" "$cu" 2> "$out/$name.log"; then
            { echo "== $name $flags"; grep -E "Function properties|registers|spill|Compiling entry" "$out/$name.log" || true; } > "$out/$name.usage"
            echo "$name.fatbin $hash nvcc-$ver" > "$out/$name.manifest"
            rm -f "$out/$name.log"
            echo "built $name.fatbin ($(wc -c < "$out/$name.fatbin") bytes)"
            return 0
        fi
        echo "build-kernels: $cu failed with flags '$flags':" >&2
        tail -20 "$out/$name.log" >&2
    done
    rm -f "$out/$name.log"
    return 1
}
# All families at once (JOBS at a time, default all: the largest, attention.cu, sets the pace).
status=0
pids=""
for cu in $(ls $src/*.cu | LC_ALL=C sort); do
    build1 "$cu" &
    pids="$pids $!"
    if [ -n "${JOBS:-}" ] && [ $(echo $pids | wc -w) -ge "$JOBS" ]; then
        for p in $pids; do wait $p || status=1; done
        pids=""
    fi
done
for p in $pids; do wait $p || status=1; done
for cu in $(ls $src/*.cu | LC_ALL=C sort); do
    name=$(basename "$cu" .cu)
    if [ -f "$out/$name.manifest" ]; then
        cat "$out/$name.manifest" >> "$out/MANIFEST"
        cat "$out/$name.usage" >> "$out/resource-usage.txt"
        rm -f "$out/$name.manifest" "$out/$name.usage"
    else
        status=1
    fi
done
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/kernels.tgz" -C "$out" .
fi
exit $status
