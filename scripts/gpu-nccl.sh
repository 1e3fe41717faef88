#!/bin/bash
# The NCCL binding on a machine with 2 or more GPUs (kernels/cuda/nccl.go): its GPU tests and
# `fewstep bench allreduce`. Here (the development machine):
#   sh scripts/gpu-prepare.sh            # builds gpubuild/cuda.test and gpubuild/fewstep.gz
# There (the device tool: kind nvidia-h100-x2, carry ["gpubuild"]), from the repository root:
#   bash scripts/gpu-nccl.sh
# Logs go to $OUT (or gpubuild/out): nccl.txt (everything), allreduce.jsonl (the bench lines).
# No nvcc step: the tests and the bench use the kernels embedded in the binaries.
set -uo pipefail
G=gpubuild
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
L=$OUT/nccl.txt
: > "$L"
log() { echo "$@" | tee -a "$L"; }

# NVLink multicast stays off (shared hosts); the binding sets this too when it is unset.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
[ -f $G/fewstep.gz ] && gunzip -f $G/fewstep.gz
chmod +x $G/fewstep $G/cuda.test 2>/dev/null
nvidia-smi -L 2>&1 | tee -a "$L"
nvidia-smi topo -m 2>&1 | head -8 | tee -a "$L"

# libnccl.so.2: the binding tries $FEWSTEP_NCCL, the loader path, then pip's wheel directories.
# Point it at PyTorch's own NCCL (nvidia-nccl-cu13) when python3 knows where that is.
if [ -z "${FEWSTEP_NCCL:-}" ]; then
    p=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
    [ -n "$p" ] && [ -f "$p" ] && export FEWSTEP_NCCL=$p
fi
log "FEWSTEP_NCCL=${FEWSTEP_NCCL:-(unset: the binding searches)} NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"
ldconfig -p 2>/dev/null | grep -i nccl | head -3 | tee -a "$L"

# 1. the NCCL tests (all-reduce sum/mean and broadcast vs the host, bad-argument errors, and the
#    machine-independent ones)
(cd kernels/cuda && timeout -k 10 180 ../../$G/cuda.test -test.run NCCL -test.v -test.count=1) >> "$L" 2>&1
log "cuda.test -test.run NCCL exit $?"
grep -E "^(--- |ok|FAIL|PASS|panic)|nccl_test.go:|cuda_test.go:|nccl: NCCL|NCCL WARN" "$L" | tail -60

# 2. the bench: 1 GiB fp32 between GPUs 0 and 1, then 256 MiB bf16
for args in "--mib 1024" "--mib 256 --dtype bf16"; do
    log "+ fewstep bench allreduce --devices 2 $args"
    res=$(timeout -k 10 120 $G/fewstep bench allreduce --devices 2 $args 2>&1)   # NCCL warnings too
    rc=$?
    echo "$res" >> "$L"
    echo "$res" | grep '^{' >> "$OUT/allreduce.jsonl"
    echo "$res" | tail -15
    log "exit $rc"
done
