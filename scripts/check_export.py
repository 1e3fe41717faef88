#!/usr/bin/env python3
"""Check a `fewstep export` folder against the PyTorch reference.

Loads OUT/config.json and OUT/diffusion_pytorch_model.safetensors into
shared/reference/wan_ref.py's WanRef (strict: every key, every shape), runs it on random inputs,
runs `fewstep model forward` on the same inputs (written as safetensors), and prints the relative
error ||out_go - out_torch|| / ||out_torch|| for a bidirectional and a block-causal forward.
Exits 1 when an error is above --tol.

  apt-get install -y python3-torch
  go build -o /tmp/fewstep ./cmd/fewstep
  /tmp/fewstep export --weights CKPT --out /tmp/export
  /usr/bin/python3.11 scripts/check_export.py --export /tmp/export --fewstep /tmp/fewstep

Safetensors are read and written here directly (8-byte header length, JSON header, raw
little-endian data), so nothing beyond torch is needed.
"""
import argparse, json, os, struct, subprocess, sys, tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = DTYPES[v["dtype"]]
        t = torch.frombuffer(bytearray(raw[base + a:base + b]), dtype=dt) if b > a else torch.empty(0, dtype=dt)
        out[k] = t.reshape(v["shape"]).float()
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        b = t.detach().float().contiguous().numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True, help="folder written by `fewstep export`")
    ap.add_argument("--fewstep", default="fewstep", help="the fewstep binary")
    ap.add_argument("--ref", default=None, help="wan_ref.py (default: shared/reference/wan_ref.py)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", type=int, default=8, help="latent height = width")
    ap.add_argument("--ctx", type=int, default=5, help="context tokens")
    ap.add_argument("--chunk", type=int, default=2, help="chunk frames of the causal check (0: skip)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ref = args.ref
    if ref is None:
        for cand in (os.path.join(HERE, "..", "..", "shared", "reference"), os.path.join(HERE, "..", "shared", "reference")):
            if os.path.exists(os.path.join(cand, "wan_ref.py")):
                ref = os.path.join(cand, "wan_ref.py")
                break
    if ref is None or not os.path.exists(ref):
        sys.exit("check_export: wan_ref.py not found; give --ref")
    sys.path.insert(0, os.path.dirname(os.path.abspath(ref)))
    from wan_ref import WanRef

    cfg = json.load(open(os.path.join(args.export, "config.json")))
    assert cfg.get("model_type") == "t2v", cfg
    if cfg["out_dim"] != cfg["in_dim"] or cfg["freq_dim"] != 256:
        sys.exit("check_export: WanRef needs out_dim == in_dim and freq_dim 256, config has %s" % cfg)
    p = dict(dim=cfg["dim"], ffn=cfg["ffn_dim"], heads=cfg["num_heads"], layers=cfg["num_layers"],
             text_dim=cfg.get("text_dim", 4096), in_dim=cfg["in_dim"])
    model = WanRef(p).eval()
    wpath = os.path.join(args.export, "diffusion_pytorch_model.safetensors")
    sd = read_safetensors(wpath)
    model.load_state_dict(sd, strict=True)  # raises on a missing / unexpected key or a shape mismatch
    print("loaded %d tensors (%d parameters) from %s into WanRef %s" % (len(sd), sum(t.numel() for t in sd.values()), wpath, p))

    g = torch.Generator().manual_seed(args.seed)
    B, C, Fr, S = 2, cfg["in_dim"], args.frames, args.size
    x = torch.randn(B, C, Fr, S, S, generator=g)
    t = torch.rand(B, Fr, generator=g) * 1000
    ctx = torch.randn(B, args.ctx, p["text_dim"], generator=g)
    # Wan2.1's WanModel zero-pads every context to text_len before its text embedding and attends to
    # the padding; WanRef takes the context as given, so it gets the padded one (fewstep pads itself).
    if args.ctx > cfg["text_len"]:
        sys.exit("check_export: --ctx %d is more than the export's text_len %d" % (args.ctx, cfg["text_len"]))
    ctx_wan = torch.cat([ctx, ctx.new_zeros(B, cfg["text_len"] - args.ctx, p["text_dim"])], 1)
    worst, outs = 0.0, {}
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "inputs.safetensors")
        write_safetensors(inp, {"x": x, "t": t, "context": ctx})
        for chunk in ([0, args.chunk] if args.chunk > 0 else [0]):
            with torch.no_grad():
                want = model(x, t, ctx_wan, chunk=chunk).float()
            out = os.path.join(tmp, "out%d.safetensors" % chunk)
            cmd = [args.fewstep, "model", "forward", "--weights", wpath, "--model-config", os.path.join(args.export, "config.json"),
                   "--inputs", inp, "--out", out, "--device", "cpu", "--chunk-frames", str(chunk)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            got = read_safetensors(out)["out"]
            err = ((got - want).norm() / want.norm()).item()
            worst = max(worst, err)
            outs[chunk] = want
            print("%-13s x %s: ||fewstep - WanRef|| / ||WanRef|| = %.3g   (|out| mean %.3g)" % (
                "causal chunk %d" % chunk if chunk else "bidirectional", list(x.shape), err, want.abs().mean().item()))
    if len(outs) == 2:  # the causal mask must matter, or the causal check proves nothing
        d = ((outs[0] - outs[args.chunk]).norm() / outs[0].norm()).item()
        print("causal vs bidirectional WanRef outputs differ by %.3g (relative)" % d)
        if d < 1e-3:
            sys.exit("check_export: the causal mask changed nothing (%.3g)" % d)
    if worst > args.tol or worst != worst:
        sys.exit("check_export: relative error %.3g above %.1g" % (worst, args.tol))
    print("OK: worst relative error %.3g <= %.1g" % (worst, args.tol))


if __name__ == "__main__":
    main()
