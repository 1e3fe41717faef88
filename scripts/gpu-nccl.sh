#!/bin/bash
# The NCCL binding on a machine with 2 or more GPUs (kernels/cuda/nccl.go): its GPU tests and
# `fewstep bench allreduce`. Here (the development machine):
#   sh scripts/gpu-prepare.sh            # builds gpubuild/cuda.test and gpubuild/fewstep.gz
# There (the device tool: kind nvidia-h100-x2, carry ["gpubuild"]), from the repository root:
#   bash scripts/gpu-nccl.sh
# Logs go to $OUT (or gpubuild/out): nccl.txt (everything), allreduce.jsonl (the bench lines).
# No nvcc step: the tests and the bench use the kernels embedded in the binaries.
set -uo pipefail
G=gpubuild LOG=nccl.txt
source "${BASH_SOURCE%/*}/gpu-nccl-env.sh" # OUT, L, log, NCCL and the binary (that file says)
nvidia-smi topo -m 2>&1 | head -8 | tee -a "$L"
ldconfig -p 2>/dev/null | grep -i nccl | head -3 | tee -a "$L"

# 1. the NCCL tests (all-reduce sum/mean and broadcast vs the host, bad-argument errors, and the
#    machine-independent ones)
(cd kernels/cuda && timeout -k 10 180 ../../$G/cuda.test -test.run NCCL -test.v -test.count=1) >> "$L" 2>&1
log "cuda.test -test.run NCCL exit $?"
grep -E "^(--- |ok|FAIL|PASS|panic)|nccl_test.go:|cuda_test.go:|nccl: NCCL|NCCL WARN" "$L" | tail -60

# 2. the bench: 1 GiB fp32 between GPUs 0 and 1, then 256 MiB bf16
for args in "--mib 1024" "--mib 256 --dtype bf16"; do
    log "+ fewstep bench allreduce --devices 2 $args"
    res=$(timeout -k 10 120 $G/fewstep bench allreduce --json --devices 2 $args 2>&1)   # NCCL warnings too
    rc=$?
    echo "$res" >> "$L"
    echo "$res" | grep '^{' >> "$OUT/allreduce.jsonl"
    echo "$res" | tail -15
    log "exit $rc"
done
