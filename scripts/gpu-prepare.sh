#!/bin/sh
# Prepares gpubuild/ (git-ignored) on the development machine for a GPU machine that has CUDA,
# nvcc and PyTorch but no Go toolchain: the GPU test binaries (go test -c, CGO_ENABLED=0), the
# fewstep binary, the run script and the PyTorch peer shared/reference/wan_ref.py.
# Then, on the GPU machine, from the repository root (the device tool: run with carry ["gpubuild"]):
#   bash gpubuild/gpu-run.sh [tests|bench|all]
# which builds the kernels with nvcc (scripts/build-kernels.sh), runs the GPU tests against them,
# the benchmarks and wan_ref.py eager and compiled, and prints a table with the ratios.
#
# SNAPSHOT=1 builds from the last commit plus the working tree's kernels/cuda (when other packages
# are mid-edit in a shared tree).
set -eu
cd "$(dirname "$0")/.."
root=$PWD
G=$root/gpubuild
rm -rf $G && mkdir -p $G
src=$root
if [ "${SNAPSHOT:-0}" = 1 ]; then
    src=$(mktemp -d)
    git archive HEAD | tar -x -C "$src"
    cp -r kernels/cuda/. "$src/kernels/cuda/"
fi
export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
(cd "$src" && go test -c -ldflags="-s -w" -o $G/cuda.test ./kernels/cuda &&
    go test -c -ldflags="-s -w" -o $G/gputest.test ./kernels/cuda/gputest &&
    go build -ldflags="-s -w" -o $G/fewstep ./cmd/fewstep)
[ "$src" != "$root" ] && rm -rf "$src"
gzip -9 $G/fewstep   # the device tool carries 64 MiB at most; gpu-run.sh unpacks it
cp scripts/gpu-run.sh $G/
ref=${WAN_REF:-../shared/reference/wan_ref.py}
[ -f "$ref" ] && cp "$ref" $G/wan_ref.py || echo "gpu-prepare: $ref not found: no PyTorch peer" >&2
du -sh $G
