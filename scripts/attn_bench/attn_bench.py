#!/usr/bin/env python3
"""Checks and times the fused attention kernels of kernels/cuda/attention.cu on a GPU.

Loads the built cubin (scripts/attn_bench/build.sh) through CuPy, launches the kernels on PyTorch
tensors, and
  1. checks forward (out, lse) and backward (dQ, dK, dV, accumulated onto random initial values)
     against an fp64 PyTorch reference on fresh random inputs: head dims 128 and 64 (other head dims
     and fp16 go to refattn.cu, tested by the Go tests), Nq != Nk with a query offset (KV cache),
     chunk masks, sizes that are not multiples of the tiles, bf16 and fp32 storage, bf16 and fp32
     gradients;
  2. times forward and backward at Wan-1.3B shapes (B=1, H=12, hd=128, N=4680 and 32760, no mask and
     block-causal by 1560-token chunks) beside torch SDPA in the same process.

Usage (on the GPU machine): python3 scripts/attn_bench/attn_bench.py BUILD_DIR [--quick] [--no-bench] [--no-flex]
(--no-flex: no flex_attention and no hd-64 timing)
"""
import math
import os
import sys
import time

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

BUILD = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else os.environ.get("OUT", "/tmp/attn_build")
QUICK = "--quick" in sys.argv
BENCH = "--no-bench" not in sys.argv

VARIANT_CUBIN = os.path.join(BUILD, "attention_variants.sm90a.cubin")
HAVE_VARIANTS = os.path.exists(VARIANT_CUBIN)
mod = cp.RawModule(path=VARIANT_CUBIN if HAVE_VARIANTS else os.path.join(BUILD, "attention.sm90a.cubin"))
# bwd3_variants.cu candidates, one cubin each (bwd3v_<name>.cubin: kernel attn_bwd3v_<name>), and the
# previous attention.fatbin (OLD_ATTN: its kernels as "old:<name>") for same-call A/B runs.
_mods = {}
for f in sorted(os.listdir(BUILD)) if os.path.isdir(BUILD) else []:
    if f.startswith("bwd3v_") and f.endswith(".cubin"):
        _mods["attn_" + f[:-len(".cubin")]] = os.path.join(BUILD, f)
_fns = {}


def fn(name, smem=0):
    f = _fns.get(name)
    if f is None:
        if name.startswith("old:"):
            f = cp.RawModule(path=os.environ["OLD_ATTN"]).get_function(name[4:])
        elif name in _mods:
            f = cp.RawModule(path=_mods[name]).get_function(name)
        else:
            f = mod.get_function(name)
        if smem > 48 * 1024:
            f.max_dynamic_shared_size_bytes = smem
        _fns[name] = f
    return f


def P(t):  # device pointer of a tensor (or 0 for None)
    return np.uint64(0 if t is None else t.data_ptr())


I32 = np.int32
F32 = np.float32
DT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
SUF = {torch.float32: "f32", torch.bfloat16: "bf16"}


# The shipped forward kernels (attention.cu FWD, attention.go attnFwdPick): name →
# (warps, 16-row m-tiles per warp, keys per tile).
SHIPPED = {"attn_fwd_hd128_bf16": (8, 1, 64), "attn_fwd_hd128_bf16_r256": (8, 2, 32), "attn_fwd_hd128_f32": (8, 1, 64),
           "attn_fwd_hd64_bf16": (4, 2, 64), "attn_fwd_hd64_f32": (8, 1, 64)}
SMS = torch.cuda.get_device_properties(0).multi_processor_count
SM90 = torch.cuda.get_device_capability(0) == (9, 0)
WGMMA_OK = os.environ.get("WGMMA_OK", "").split()  # wgmma kernels that passed in a process of their own


def fwd_pick(B, Nq, H, hd, dt, ct):  # attention.go's attnFwdPick: the name suffix
    # (the sm_90a kernel only once it passed alone: a broken one may hang on its mbarriers)
    if hd == 128 and dt == torch.bfloat16 and SM90 and "attn_fwd_hd128_bf16_sm90" in WGMMA_OK and os.environ.get("FEWSTEP_ATTN") != "fa2":
        return "_sm90"
    if hd == 128 and dt == torch.bfloat16 and (ct == 0 or (Nq + 255) // 256 * H * B >= 4 * SMS):
        return "_r256"
    return ""


def fwd_alternatives(hd, dt):  # every hd-128 bf16 forward configuration attention.go can launch
    if hd != 128 or dt != torch.bfloat16:
        return []
    return ["", "_r256"] + (["_sm90"] if SM90 and "attn_fwd_hd128_bf16_sm90" in WGMMA_OK else [])


VARIANTS = {  # tuning candidates (attention_variants.cu beside this script): name → (hd, warps, m-tiles, keys per tile)
    "attn_fwdv_hd128_w4m2b64": (128, 4, 2, 64), "attn_fwdv_hd128_w4m2b32": (128, 4, 2, 32),
    "attn_fwdv_hd128_w8m1b128": (128, 8, 1, 128),
    "attn_fwdv_hd64_w8m1b64": (64, 8, 1, 64), "attn_fwdv_hd64_w8m2b32": (64, 8, 2, 32),
    # Hopper wgmma kernels (8 warps = 2 warpgroups, 128 rows, 128-key tiles)
    "attn_fwdw_hd128_serial": (128, 8, 1, "w"), "attn_fwdw_hd128_pipe": (128, 8, 1, "w3"),
    # FA3-style (warp-specialized, 3 warpgroups = 384 threads, 128 rows, 128-key tiles, NS-stage ring)
    "attn_fwd_hd128_bf16_sm90": (128, 12, 1, "f2"), "attn_fwd3v_ns2": (128, 12, 1, "f2"),
    "attn_fwd3v_ns3pp": (128, 12, 1, "f3"), "attn_fwd3v_ns2pp_vswap": (128, 12, 1, "f2"),
}
WG_SMEM = {"w": (128 * 128 + 4 * 128 * 128) * 2, "w3": (128 * 128 + 6 * 128 * 128) * 2,
           "f2": 1024 + 32768 * 5 + 8 * 9, "f3": 1024 + 32768 * 7 + 8 * 13}  # attention.go attnSm90Smem


def fwd_smem(hd, nw, wm, bc):
    return (nw * wm * 16 + 4 * bc) * (hd + 8) * 2


BWD_NW = 8  # the shipped backward: warps per block = keys per block / 16
BWD_VARIANTS = {}  # v2 tried 4 warps / 64 keys per block: slower (192 vs 230 TFLOP/s at N=32760)


def bwd_smem(hd, nw=BWD_NW):
    bc = 16 * nw
    return (2 * bc * (hd + 8) + 4 * 64 * (hd + 8) + bc * 72) * 2 + 4 * 64 * 4


# The sm_90a backward (attention.cu attn_bwd_hd128_bf16_g*_sm90; attention.go attnBwdSm90): 384
# threads per 128-key tile, its dQ through a tiled fp32 scratch (⌈Nq/64⌉ × 8192 per (b, h)) that
# attn_dq_finish_sm90 adds into dQ. Taken once it passed alone (BWD90_OK=1: a broken one may hang).
# The _rq kernel (split key tiles, as attention.go) and candidates named *_d, *_v (bwd3_variants.cu,
# DQT 1, 2) add dQ straight into an fp32 [B,Nq,H,hd]
# (dQ itself when fp32, else a scratch that attn_add_f32_into adds). "old:<name>": the kernels of the
# previous attention.fatbin (OLD_ATTN), v7's layout.
BWD90_SMEM = 1024 + 5 * 32768 + 2 * 64 * 288 + 2 * 512 + 8 * 5
BWD90_SMEM_OLD = 1024 + 6 * 32768 + 2 * 512 + 8 * 5
BWD90_VARIANTS = [n for n in os.environ.get("BWD90_VARIANTS", "").split() if n]  # attention_variants.cu names


def bwd90_pick(hd, dt):
    return hd == 128 and dt == torch.bfloat16 and SM90 and os.environ.get("BWD90_OK") == "1" \
        and os.environ.get("FEWSTEP_ATTN") != "fa2" and os.environ.get("FEWSTEP_ATTN_BWD") != "fa2"


def fast_ok(hd, dt):
    return hd in (64, 128) and dt in (torch.bfloat16, torch.float32)


def attn_fwd(out, lse, q, k, v, ct, qoff, variant=None, cfg=None):
    """variant: a tuning kernel by name; cfg: a shipped configuration suffix ("" or "_r256"), None = as attention.go picks."""
    B, Nq, H, hd = q.shape
    Nk = k.shape[1]
    assert fast_ok(hd, q.dtype)
    scale = F32(1.0 / math.sqrt(hd))
    if variant:
        _, nw, wm, bc = VARIANTS[variant]
        name = variant
        if bc in WG_SMEM:
            sm = WG_SMEM[bc]
            fn(name, sm)((((Nq + 127) // 128), H, B), (384 if bc[0] == "f" else 256,), (P(q), P(k), P(v), P(out), P(lse), I32(Nq), I32(Nk), I32(H), I32(ct), I32(qoff), scale), shared_mem=sm)
            return
    else:
        if cfg is None:
            cfg = fwd_pick(B, Nq, H, hd, q.dtype, ct)
        name = f"attn_fwd_hd{hd}_{SUF[q.dtype]}{cfg}"
        if cfg == "_sm90":
            return attn_fwd(out, lse, q, k, v, ct, qoff, variant=name)
        nw, wm, bc = SHIPPED[name]
    br, sm = nw * wm * 16, fwd_smem(hd, nw, wm, bc)
    fn(name, sm)((((Nq + br - 1) // br), H, B), (nw * 32,), (P(q), P(k), P(v), P(out), P(lse), I32(Nq), I32(Nk), I32(H), I32(ct), I32(qoff), scale), shared_mem=sm)


def bwd90_tail(units, nqt):  # attention.go attnBwdTail: the last units % SMs key tiles in s blocks each
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    R = units % sms
    if R == 0 or os.environ.get("FEWSTEP_ATTN_TAIL") == "0":
        return 0, 1
    s = min(sms // R, nqt // 4, 255)
    return (R, s) if s >= 2 else (0, 1)


def attn_bwd(dQ, dK, dV, dO, out, lse, q, k, v, ct, qoff, ws=None, variant=None, sm90=None, qsplit=1, name90=None, tail=None):
    """Accumulates into dQ, dK, dV (any may be None). ws: fp32 scratch dict (D, and dQ for bf16 grads).
    sm90: the sm_90a kernel (None: as bwd90_pick says); qsplit: blocks per key tile (fp32 grads);
    tail (sm_90a, qsplit 1, not the old fatbin): (R, s) the tail split, None as attention.go, False none."""
    B, Nq, H, hd = q.shape
    Nk = k.shape[1]
    scale = F32(1.0 / math.sqrt(hd))
    gdt = next(t.dtype for t in (dQ, dK, dV) if t is not None)
    assert fast_ok(hd, q.dtype) and (q.dtype == torch.bfloat16 or gdt == torch.float32)
    D = ws["D"] if ws else torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)
    rows = B * Nq * H
    fn(f"attn_bwd_prep_{SUF[q.dtype]}")((((rows * 32 + 255) // 256),), (256,), (P(D), P(dO), P(out), I32(B), I32(Nq), I32(H), I32(hd)))
    if sm90 is None:
        sm90 = bwd90_pick(hd, q.dtype) and variant is None
    if sm90:
        # attention.go: split key tiles (fp32 gradients) go to the _rq kernel, dQ straight into dQ
        name = name90 or f"attn_bwd_hd128_bf16_g{SUF[gdt]}_sm90" + ("_rq" if qsplit > 1 and not os.environ.get("OLD_SPLIT") else "")
        ntk = (Nk + 127) // 128
        old = name.startswith("old:")
        smem = BWD90_SMEM_OLD if old and os.environ.get("OLD_V7") else BWD90_SMEM  # OLD_ATTN of v7's layout, or v8's
        if not name.endswith(("_d", "_v", "_rq")):  # the tiled scratch and its finishing pass
            nqt = (Nq + 63) // 64
            acc = None
            if dQ is not None:
                acc = ws.get("dQ90") if ws else None
                if acc is None or acc.numel() < B * H * nqt * 8192:
                    acc = torch.empty(B * H * nqt * 8192, device=q.device, dtype=torch.float32)
                    if ws is not None:
                        ws["dQ90"] = acc
                acc.zero_()
            grid, qarg = (ntk * qsplit, H, B), qsplit
            if tail is None:
                tail = bwd90_tail(ntk * H * B, (Nq + 63) // 64) if not old else False
            if tail and qsplit == 1 and tail[1] > 1:
                R, s = tail
                grid, qarg = (ntk * H * B + R * (s - 1), 1, 1), -(R << 8 | s)
            fn(name, smem)(grid, (384,), (P(dK), P(dV), P(acc), P(dO), P(lse), P(D), P(q), P(k), P(v), I32(Nq), I32(Nk), I32(H), I32(ct), I32(qoff), scale, I32(qarg)), shared_mem=smem)
            if dQ is not None:
                n = dQ.numel()
                fn("old:attn_dq_finish_sm90" if old else "attn_dq_finish_sm90")((min((n + 255) // 256, 65535),), (256,), (P(dQ), I32(DT[dQ.dtype]), P(acc), I32(Nq), I32(H), np.int64(n)))
            return
        acc = dQ  # candidates _d, _v (DQT 1, 2): straight into an fp32 dQ
        if dQ is not None and dQ.dtype != torch.float32:
            acc = ws.get("dQ") if ws else None
            if acc is None or acc.shape != dQ.shape:
                acc = torch.empty(dQ.shape, device=q.device, dtype=torch.float32)
            acc.zero_()
        fn(name, smem)((ntk * qsplit, H, B), (384,), (P(dK), P(dV), P(acc), P(dO), P(lse), P(D), P(q), P(k), P(v), I32(Nq), I32(Nk), I32(H), I32(ct), I32(qoff), scale, I32(qsplit)), shared_mem=smem)
        if dQ is not None and acc is not dQ:
            n = dQ.numel()
            fn("attn_add_f32_into")((min((n + 255) // 256, 65535),), (256,), (P(dQ), I32(DT[dQ.dtype]), P(acc), np.int64(n)))
        return
    dQacc = dQ
    if dQ is not None and dQ.dtype != torch.float32:
        dQacc = ws["dQ"] if ws else torch.zeros(dQ.shape, device=q.device, dtype=torch.float32)
        dQacc.zero_()
    name, nw = f"attn_bwd_hd{hd}_{SUF[q.dtype]}_g{SUF[gdt]}", BWD_NW
    if variant:
        name, nw = variant, BWD_VARIANTS[variant][1]
    sm, bc = bwd_smem(hd, nw), 16 * nw
    fn(name, sm)((((Nk + bc - 1) // bc), H, B), (nw * 32,), (P(dK), P(dV), P(dQacc), P(dO), P(lse), P(D), P(q), P(k), P(v), I32(Nq), I32(Nk), I32(H), I32(ct), I32(qoff), scale, I32(1)), shared_mem=sm)
    if dQ is not None and dQacc is not dQ:
        n = dQ.numel()
        fn("attn_add_f32_into")((min((n + 255) // 256, 65535),), (256,), (P(dQ), I32(DT[dQ.dtype]), P(dQacc), np.int64(n)))


def visible(Nq, Nk, ct, qoff, device):
    if ct == 0:
        return torch.ones(Nq, Nk, dtype=torch.bool, device=device)
    i = torch.arange(Nq, device=device)[:, None] + qoff
    j = torch.arange(Nk, device=device)[None, :]
    return (j // ct) <= (i // ct)


def reference(q, k, v, dO, ct, qoff):
    """fp64 reference: out, lse, dq, dk, dv; inputs [B,N,H,hd] of any dtype."""
    qd, kd, vd = (t.detach().double().transpose(1, 2).requires_grad_(True) for t in (q, k, v))
    s = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~visible(q.shape[1], k.shape[1], ct, qoff, q.device), float("-inf"))
    lse = torch.logsumexp(s, -1)
    o = torch.softmax(s, -1) @ vd
    o.backward(dO.double().transpose(1, 2))
    tr = lambda t: t.transpose(1, 2)
    return tr(o).detach(), lse.detach(), tr(qd.grad), tr(kd.grad), tr(vd.grad)


def rel(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm()).item()


def check(B, Nq, Nk, H, hd, ct, qoff, dt=torch.bfloat16, gdt=torch.float32, tol=1e-2, bwd_variant=None, cfg=None, sm90=None, qsplit=1, name90=None, tail=None):
    dev = "cuda"
    q, k, v = (torch.randn(B, n, H, hd, device=dev).to(dt) for n in (Nq, Nk, Nk))
    dO = torch.randn(B, Nq, H, hd, device=dev).to(dt)
    out = torch.full((B, Nq, H, hd), float("nan"), device=dev, dtype=dt)  # poisoned
    lse = torch.full((B, H, Nq), float("nan"), device=dev)
    attn_fwd(out, lse, q, k, v, ct, qoff, cfg=cfg)
    g0s = 1.0 if gdt == torch.float32 else 1e-3  # bf16 sums lose the small addend: keep the start small
    g0 = [(g0s * torch.randn(B, n, H, hd, device=dev)).to(gdt) for n in (Nq, Nk, Nk)]  # += onto these
    dQ, dK, dV = (t.clone() for t in g0)
    attn_bwd(dQ, dK, dV, dO, out, lse, q, k, v, ct, qoff, variant=bwd_variant, sm90=sm90, qsplit=qsplit, name90=name90, tail=tail)
    torch.cuda.synchronize()
    ro, rl, rq, rk, rv = reference(q, k, v, dO.float(), ct, qoff)
    # the backward is checked on its own: the reference gradient is taken at the kernel's own out
    # only through D = rowsum(dO∘out); an out error shows in e_out already.
    errs = dict(out=rel(out, ro), lse=rel(lse, rl), dq=rel(dQ.double() - g0[0].double(), rq),
                dk=rel(dK.double() - g0[1].double(), rk), dv=rel(dV.double() - g0[2].double(), rv))
    ok = all(e <= tol for e in errs.values())
    fc = fwd_pick(B, Nq, H, hd, dt, ct) if cfg is None else cfg
    b90 = bwd90_pick(hd, dt) and bwd_variant is None if sm90 is None else sm90
    print(f"{'PASS' if ok else 'FAIL'} {bwd_variant or ''}fwd{fc or '_r128'} bwd{'_sm90' if b90 else ''}{f' {name90}' if name90 else ''}{f' qsplit={qsplit}' if qsplit > 1 else ''}{f' tail={tail}' if tail else ''} B={B} Nq={Nq} Nk={Nk} H={H} hd={hd} ct={ct} qoff={qoff} {SUF.get(dt, dt)} grad={SUF.get(gdt, gdt)} "
          + " ".join(f"{k}={v:.2e}" for k, v in errs.items()), flush=True)
    return ok


def check_variant(variant, B, Nq, Nk, H, ct, qoff, tol=1e-2):
    hd = VARIANTS[variant][0]
    q, k, v = (torch.randn(B, n, H, hd, device="cuda").to(torch.bfloat16) for n in (Nq, Nk, Nk))
    out = torch.full((B, Nq, H, hd), float("nan"), device="cuda", dtype=torch.bfloat16)
    lse = torch.full((B, H, Nq), float("nan"), device="cuda")
    attn_fwd(out, lse, q, k, v, ct, qoff, variant=variant)
    torch.cuda.synchronize()
    out2, lse2 = torch.full_like(out, float("nan")), torch.full_like(lse, float("nan"))
    attn_fwd(out2, lse2, q, k, v, ct, qoff, variant=variant)  # a moving result is a race
    torch.cuda.synchronize()
    same = torch.equal(out, out2) and torch.equal(lse, lse2)
    ro, rl, *_ = reference(q, k, v, torch.zeros_like(q, dtype=torch.float32), ct, qoff)
    e = (rel(out, ro), rel(lse, rl))
    ok = max(e) <= tol and same
    print(f"{'PASS' if ok else 'FAIL'} {variant} B={B} Nq={Nq} Nk={Nk} H={H} ct={ct} qoff={qoff} out={e[0]:.2e} lse={e[1]:.2e}"
          + ("" if same else " NOT REPEATABLE"), flush=True)
    return ok


def bench_ms(f, iters, warm=2):
    for _ in range(warm):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return float(np.median(ts))


def bench(N, ct, iters, H=12, hd=128):
    B = 1
    dev = "cuda"
    q, k, v, dO = (torch.randn(B, N, H, hd, device=dev, dtype=torch.bfloat16) for _ in range(4))
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=dev)
    dQ, dK, dV = (torch.zeros(B, N, H, hd, device=dev) for _ in range(3))
    ws = dict(D=torch.empty(B, H, N, device=dev))
    pairs = visible(N, N, ct, 0, dev).sum().item() if ct else N * N  # visible (i, j) pairs
    ffwd = 4.0 * pairs * hd * H
    fbwd = 2.5 * ffwd
    t_f = bench_ms(lambda: attn_fwd(out, lse, q, k, v, ct, 0), iters)
    t_b = bench_ms(lambda: attn_bwd(dQ, dK, dV, dO, out, lse, q, k, v, ct, 0, ws=ws), iters)
    pick = fwd_pick(B, N, H, hd, torch.bfloat16, ct)
    b90 = bwd90_pick(hd, torch.bfloat16)
    rows = [(f"ours (fwd{pick or '_r128'}, bwd{'_sm90' if b90 else ''})", t_f, t_b)]
    if b90:  # the mma.sync backward, A/B
        rows.append(("ours, bwd mma.sync (fa2)", float("nan"), bench_ms(lambda: attn_bwd(dQ, dK, dV, dO, out, lse, q, k, v, ct, 0, ws=ws, sm90=False), iters)))
        gb = [torch.zeros(B, N, H, hd, device=dev, dtype=torch.bfloat16) for _ in range(3)]
        rows.append(("ours, bwd_sm90, bf16 grads", float("nan"), bench_ms(lambda: attn_bwd(*gb, dO, out, lse, q, k, v, ct, 0, ws=ws), iters)))
    for other in fwd_alternatives(hd, torch.bfloat16):
        if other != pick:
            rows.append((f"ours, fwd{other or '_r128'}", bench_ms(lambda: attn_fwd(out, lse, q, k, v, ct, 0, cfg=other), iters), float("nan")))
    if HAVE_VARIANTS:
        for name, (vhd, *_) in VARIANTS.items():
            if vhd == hd and usable(name) and name != "attn_fwd_hd128_bf16_sm90":
                rows.append((name.replace("attn_fwdv_hd128_", "fwd variant ").replace("attn_fwdw_hd128_", "fwd wgmma "), bench_ms(lambda: attn_fwd(out, lse, q, k, v, ct, 0, variant=name), iters), float("nan")))
        for name, (vhd, _) in BWD_VARIANTS.items():
            if vhd == hd:
                rows.append((name.replace("attn_bwdv_hd128_bf16_gf32_", "bwd variant "), float("nan"), bench_ms(lambda: attn_bwd(dQ, dK, dV, dO, out, lse, q, k, v, ct, 0, ws=ws, variant=name), iters)))
    # torch SDPA on [B,H,N,hd]
    qt, kt, vt = (t.transpose(1, 2).contiguous().requires_grad_(True) for t in (q, k, v))
    dOt = dO.transpose(1, 2).contiguous()
    mask = None if ct == 0 else visible(N, N, ct, 0, dev)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)] if ct == 0 else \
        [("sdpa-efficient+mask", SDPBackend.EFFICIENT_ATTENTION), ("sdpa-cudnn+mask", SDPBackend.CUDNN_ATTENTION)]
    for label, be in backends:
        try:
            with sdpa_kernel(be):
                fwd = lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
                tf = bench_ms(fwd, iters)
                o = fwd()
                tb = bench_ms(lambda: torch.autograd.grad(o, (qt, kt, vt), dOt, retain_graph=True), iters)
            rows.append((label, tf, tb))
        except Exception as e:  # a backend may not take this case
            print(f"  {label}: not run ({str(e).splitlines()[0][:120]})")
    if ct and "--no-flex" not in sys.argv:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            bm = create_block_mask(lambda b, h, i, j: (j // ct) <= (i // ct), None, None, N, N, device=dev)
            flex = torch.compile(flex_attention)
            fwd = lambda: flex(qt, kt, vt, block_mask=bm)
            tf = bench_ms(fwd, iters, warm=3)
            o = fwd()
            tb = bench_ms(lambda: torch.autograd.grad(o, (qt, kt, vt), dOt, retain_graph=True), iters, warm=3)
            rows.append(("flex_attention(compiled)", tf, tb))
        except Exception as e:
            print(f"  flex_attention: not run ({str(e).splitlines()[0][:120]})")
    for label, tf, tb in rows:
        print(f"  N={N:6d} ct={ct:5d} H={H} hd={hd} {label:26s} fwd {tf:8.3f} ms {ffwd / tf / 1e9:6.1f} TFLOP/s   bwd {tb:8.3f} ms {fbwd / tb / 1e9:6.1f} TFLOP/s", flush=True)


def profile():
    """One forward and one backward at N=4680, B=1, H=12, hd=128 (run under ncu)."""
    N, H, hd = 4680, 12, 128
    q, k, v, dO = (torch.randn(1, N, H, hd, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    out, lse = torch.empty_like(q), torch.empty(1, H, N, device="cuda")
    dQ, dK, dV = (torch.zeros(1, N, H, hd, device="cuda") for _ in range(3))
    attn_fwd(out, lse, q, k, v, 0, 0, variant=os.environ.get("PROFILE_VARIANT"))
    attn_bwd(dQ, dK, dV, dO, out, lse, q, k, v, 0, 0)
    torch.cuda.synchronize()


def usable(name):
    return VARIANTS[name][3] not in WG_SMEM or name in WGMMA_OK


# B, Nq, Nk, H, ct, qoff: one tile; KV cache; block-causal; several stages round the ring (odd sizes, B > 1)
VARIANT_CASES = [(2, 200, 200, 3, 0, 0), (1, 130, 390, 2, 130, 260), (1, 300, 300, 2, 64, 0), (1, 1000, 1000, 2, 100, 0),
                 (2, 1337, 1337, 2, 0, 0), (1, 1, 700, 2, 0, 0), (1, 4680, 4680, 1, 1560, 0)]


# B, Nq, Nk, H, hd, ct, qoff for the sm_90a backward alone: one tile, block-causal with partial tiles,
# KV cache, Nq != Nk both ways, one query, several ring rounds with B > 1, Wan chunks.
BWD90_CASES = [(2, 200, 200, 3, 128, 0, 0), (1, 64, 128, 1, 128, 0, 0), (1, 300, 300, 2, 128, 64, 0), (1, 257, 257, 2, 128, 100, 0),
               (1, 130, 390, 2, 128, 130, 260), (1, 100, 357, 2, 128, 50, 257), (1, 77, 500, 2, 128, 0, 0),
               (1, 200, 70, 1, 128, 0, 0), (1, 1, 300, 2, 128, 100, 250), (2, 1337, 1337, 2, 128, 0, 0),
               (1, 4680, 4680, 2, 128, 1560, 0), (1, 1560, 4680, 2, 128, 1560, 3120)]


def main():
    if "--profile" in sys.argv:
        return profile()
    if "--only-bwd90" in sys.argv:  # the sm_90a backward alone, in a process of its own (a bad one may hang)
        torch.manual_seed(1)
        ok = True
        if os.environ.get("BWD90_SKIP_SHIPPED") != "1":
            for c in BWD90_CASES:
                ok &= check(*c, sm90=True)
            for c in [(1, 300, 300, 2, 128, 64, 0), (1, 130, 390, 2, 128, 130, 260)]:
                ok &= check(*c, gdt=torch.bfloat16, sm90=True)
            ok &= check(1, 1000, 200, 2, 128, 0, 0, sm90=True, qsplit=4)
            ok &= check(1, 1500, 1500, 1, 128, 500, 0, sm90=True, qsplit=3)
            # the tail split (attnBwdTail), fp32 and bf16 gradients: explicit (R, s), incl. more blocks
            # than a unit has query tiles (empty runs), a masked KV cache, B > 1 and the last units of a head
            for c, t in [((2, 1337, 1337, 2, 128, 0, 0), (44, 3)), ((2, 1337, 1337, 2, 128, 0, 0), (5, 7)),
                         ((1, 4680, 4680, 2, 128, 1560, 0), (10, 3)), ((1, 100, 357, 2, 128, 50, 257), (6, 4)),
                         ((1, 1560, 4680, 2, 128, 1560, 3120), (30, 2)), ((1, 77, 500, 2, 128, 0, 0), (3, 2))]:
                for gdt in (torch.float32, torch.bfloat16):
                    ok &= check(*c, gdt=gdt, sm90=True, tail=t)
        for n in BWD90_VARIANTS:  # the candidates (bwd3_variants.cu, fp32 gradients) on five cases and a query split
            for c in [(2, 1337, 1337, 2, 128, 0, 0), (1, 100, 357, 2, 128, 50, 257), (1, 4680, 4680, 2, 128, 1560, 0),
                      (1, 200, 70, 1, 128, 0, 0), (1, 1, 300, 2, 128, 100, 250)]:
                ok &= check(*c, sm90=True, name90=n)
            ok &= check(1, 1500, 1500, 1, 128, 500, 0, sm90=True, qsplit=3, name90=n)
        print("BWD90 ALL PASS" if ok else "BWD90 SOME FAILED", flush=True)
        sys.exit(0 if ok else 1)
    if "--bwd90-speed" in sys.argv:  # the sm_90a backward beside the mma.sync one and SDPA
        # Wan-1.3B shapes: self-attention at 32,760 and 4,680 tokens (block-causal by 1,560 at 32,760),
        # and the cross-attention of the training step: 4,680 queries × 512 keys, 11 blocks per key tile
        # (attention.go attnBwdSplit: 48 key-tile blocks on 132 SMs)
        for N, Nk, ct, split in ((32760, 32760, 0, 1), (4680, 4680, 0, 1), (32760, 32760, 1560, 1), (4680, 512, 0, 11)):
            q, dO = (torch.randn(1, N, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            k, v = (torch.randn(1, Nk, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            out, lse = torch.empty_like(q), torch.empty(1, 12, N, device="cuda")
            dQ = torch.zeros(1, N, 12, 128, device="cuda")
            dK, dV = (torch.zeros(1, Nk, 12, 128, device="cuda") for _ in range(2))
            ws = dict(D=torch.empty(1, 12, N, device="cuda"))
            attn_fwd(out, lse, q, k, v, ct, 0)
            pairs = visible(N, Nk, ct, 0, "cuda").sum().item() if ct else N * Nk
            runs = [("sm90", True, None), ("sm90 no tail", True, None), ("mma.sync", False, None)] + [(n, True, n) for n in BWD90_VARIANTS]
            if os.environ.get("OLD_ATTN"):
                runs.insert(2, ("old sm90 (committed)", True, "old:attn_bwd_hd128_bf16_gf32_sm90"))
            its = int(os.environ.get("SPEED_ITERS", "5"))
            for rep in range(int(os.environ.get("SPEED_REPS", "1"))):  # repeated rounds: the spread
                for label, s90, n90 in runs:
                    tl = False if label.endswith("no tail") else None
                    t = bench_ms(lambda: attn_bwd(dQ, dK, dV, dO, out, lse, q, k, v, ct, 0, ws=ws, sm90=s90, name90=n90, qsplit=split, tail=tl), its)
                    print(f"  N={N} Nk={Nk} ct={ct} bwd {label:34s} {t:8.3f} ms {10.0 * pairs * 128 * 12 / t / 1e9:6.1f} TFLOP/s", flush=True)
            if ct == 0 and N == Nk:  # the peers, same call: PyTorch SDPA's flash and cuDNN backward
                from torch.nn.attention import SDPBackend, sdpa_kernel
                qt, kt, vt = (t.transpose(1, 2).contiguous().requires_grad_(True) for t in (q, k, v))
                dOt = dO.transpose(1, 2).contiguous()
                for label, be in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                    with sdpa_kernel(be):
                        o = F.scaled_dot_product_attention(qt, kt, vt)
                        t = bench_ms(lambda: torch.autograd.grad(o, (qt, kt, vt), dOt, retain_graph=True), int(os.environ.get("SPEED_ITERS", "5")))
                    print(f"  N={N} Nk={Nk} ct={ct} bwd {label:34s} {t:8.3f} ms {10.0 * pairs * 128 * 12 / t / 1e9:6.1f} TFLOP/s", flush=True)
                del qt, kt, vt, dOt, o
        return
    if "--only-variant" in sys.argv:  # checks one variant in a process of its own (a bad one may fault)
        name = sys.argv[sys.argv.index("--only-variant") + 1]
        ok = all([check_variant(name, *c) for c in VARIANT_CASES])
        sys.exit(0 if ok else 1)
    torch.manual_seed(int(time.time()))
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    cases = [
        # B, Nq, Nk, H, hd, ct, qoff
        (2, 200, 200, 3, 128, 0, 0),
        (1, 300, 300, 2, 128, 64, 0),
        (1, 257, 257, 2, 128, 100, 0),
        (1, 130, 390, 2, 128, 130, 260),   # KV cache: the last chunk's queries
        (1, 100, 357, 2, 128, 50, 257),    # chunk not a tile multiple, partial tiles
        (1, 77, 500, 2, 128, 0, 0),        # Nq != Nk, no mask
        (1, 200, 70, 1, 128, 0, 0),
        (2, 200, 200, 3, 64, 0, 0),
        (1, 130, 390, 2, 64, 130, 260),
        (1, 300, 300, 2, 64, 64, 0),
        (1, 1, 300, 2, 128, 100, 250),     # one query (streaming decode shape)
        (3, 64, 64, 4, 64, 16, 0),
    ]
    ok = True
    for c in cases:
        ok &= check(*c)
    for c in [(1, 300, 300, 2, 128, 64, 0), (1, 130, 390, 2, 64, 130, 260)]:
        ok &= check(*c, dt=torch.float32, gdt=torch.float32)                 # fp32 storage, fast path
        ok &= check(*c, dt=torch.bfloat16, gdt=torch.bfloat16)              # bf16 grads (dQ via fp32 scratch)
    ok &= check(1, 4680, 4680, 2, 128, 1560, 0)                              # Wan chunk size
    ok &= check(1, 1560, 4680, 2, 128, 1560, 3120)
    for c in cases:  # the other hd-128 bf16 forward configurations on every case
        for other in fwd_alternatives(c[4], torch.bfloat16):
            if other != fwd_pick(c[0], c[1], c[3], c[4], torch.bfloat16, c[5]):
                ok &= check(*c, cfg=other)
    if HAVE_VARIANTS:
        for name in filter(usable, VARIANTS):
            for c in VARIANT_CASES:
                ok &= check_variant(name, *c)
        for name, (hd, _) in BWD_VARIANTS.items():
            for c in [(2, 200, 200, 3, hd, 0, 0), (1, 130, 390, 2, hd, 130, 260), (1, 1000, 1000, 2, hd, 100, 0)]:
                ok &= check(*c, bwd_variant=name)
    print("ALL PASS" if ok else "SOME FAILED", flush=True)
    if BENCH:
        it = 5 if QUICK else 20
        for N in (4680, 32760):
            for ct in (0, 1560):
                bench(N, ct, it if N < 10000 else max(3, it // 4))
        if "--no-flex" not in sys.argv:
            bench(4680, 0, it, H=24, hd=64)


if __name__ == "__main__":
    main()
