# Sourced (not run) by the GPU scripts that go through NCCL: gpu-nccl.sh, gpu-launch.sh and
# gpu-dist.sh, on the device machine from the repository root. Set before sourcing: G, the carried
# build folder (fewstep or fewstep.gz, cuda.test), and LOG, the log's file name. It sets OUT ($OUT,
# else $G/out) and L (OUT/LOG, emptied), defines log (to the terminal and L), keeps NVLink multicast
# off (NCCL_NVLS_ENABLE=0 unless set: shared hosts), unpacks the binary, lists the GPUs, and points
# FEWSTEP_NCCL at PyTorch's own NCCL (nvidia-nccl-cu13) when python3 knows where it is (else the
# binding searches the loader path and pip's wheel directories).
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
L=$OUT/$LOG
: > "$L"
log() { echo "$@" | tee -a "$L"; }
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} NCCL_DEBUG=${NCCL_DEBUG:-WARN}
[ -f "$G/fewstep.gz" ] && gunzip -f "$G/fewstep.gz"
chmod +x "$G/fewstep" "$G/cuda.test" 2>/dev/null
nvidia-smi -L 2>&1 | tee -a "$L"
if [ -z "${FEWSTEP_NCCL:-}" ]; then
    p=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
    [ -n "$p" ] && [ -f "$p" ] && export FEWSTEP_NCCL=$p
fi
log "FEWSTEP_NCCL=${FEWSTEP_NCCL:-(unset: the binding searches)} NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"
