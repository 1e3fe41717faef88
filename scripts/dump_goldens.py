#!/usr/bin/env python3
"""Dump golden tensors for the Go DiT from the PyTorch reference ../shared/reference/wan_ref.py.

For two small architectures of different shapes, each bidirectional and block-causal, it writes
(all safetensors F32, Wan2.1 key layout) into models/testdata/:
  <preset>.config.json            Wan config.json of the architecture (with text_dim)
  <preset>.weights.safetensors    random weights, every parameter randomized (head included)
  odd.weights.{bf16,f16}.safetensors  the same weights rounded by torch to BF16 / F16
  <case>.inputs.safetensors       x [B,C,F,H,W], t [B,F] (distinct per frame), context [B,L,text_dim]
                                  (as given to Wan, unpadded), cotangent [B,C,F,H,W]
  <case>.expect.safetensors       out, grad.x and grad.<param> of <out, cotangent> for every parameter
                                  (metadata: chunk_frames, text_len)
  <case>.config.json              for a case whose text_len is not its architecture's (tiny_short)
Wan2.1's WanModel zero-pads every context to text_len before the text embedding and attends to the
padding; WanRef takes the context as given, so each case's context is padded here first. The
architectures' text_len is their cases' L (no padding); tiny_short has L = 5 of text_len 8.
Run:  /usr/bin/python3.11 scripts/dump_goldens.py [--ref ../shared/reference/wan_ref.py] [--out models/testdata]
The reference is imported from its file; nothing of it is copied here. safetensors is written by hand.
"""
import argparse, importlib.util, json, os, struct, sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (architecture for wan_ref.WanRef, its text_len,
#          cases: (case, B, F, H, W, L, chunk_frames, text_len))
ARCHS = {
    "tiny": (dict(dim=64, ffn=256, heads=2, layers=2, text_dim=32, in_dim=16), 5,
             [("tiny_bidir", 2, 4, 4, 6, 5, 0, 5), ("tiny_causal", 2, 4, 4, 6, 5, 2, 5),
              ("tiny_short", 2, 4, 4, 6, 5, 0, 8)]),
    "odd": (dict(dim=48, ffn=96, heads=4, layers=2, text_dim=24, in_dim=4), 7,
            [("odd_bidir", 1, 3, 6, 4, 7, 0, 7), ("odd_causal", 1, 3, 6, 4, 7, 1, 7)]),
}


def tensor_bytes(t, dtype):
    t = t.detach().contiguous().cpu()
    if dtype == "F32":
        return t.to(torch.float32).numpy().astype("<f4").tobytes()
    if dtype == "F16":
        return t.to(torch.float16).numpy().astype("<f2").tobytes()
    if dtype == "BF16":  # torch's own float32 -> bfloat16 rounding; bytes through an int16 view
        return t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, meta=None, dtype="F32"):
    """tensors: list of (name, tensor) stored as dtype. 8-byte aligned header, written atomically."""
    hdr, blobs, off = {}, [], 0
    if meta:
        hdr["__metadata__"] = {k: str(v) for k, v in meta.items()}
    for name, t in tensors:
        b = tensor_bytes(t, dtype)
        hdr[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def randomize(model, gen):
    """Every parameter random and non-degenerate: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1²),
    norm weights ~ 1 + N(0, 0.1²), modulations ~ N(0, 1/D) (Wan's law)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default=os.path.join(ROOT, "..", "shared", "reference", "wan_ref.py"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "testdata"))
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("wan_ref", args.ref)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for seed, (arch, (p, arch_text_len, cases)) in enumerate(ARCHS.items()):
        gen = torch.Generator().manual_seed(1000 + seed)
        model = ref.WanRef(p).float()
        randomize(model, gen)
        names = [n for n, _ in model.named_parameters()]
        cfg = dict(_class_name="WanModel", model_type="t2v", dim=p["dim"], ffn_dim=p["ffn"], freq_dim=256,
                   in_dim=p["in_dim"], out_dim=p["in_dim"], num_heads=p["heads"], num_layers=p["layers"],
                   text_len=arch_text_len, text_dim=p["text_dim"], eps=1e-6)
        with open(os.path.join(args.out, arch + ".config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        write_safetensors(os.path.join(args.out, arch + ".weights.safetensors"),
                          [(n, q) for n, q in model.named_parameters()], {"format": "pt"})
        if arch == "odd":  # the same weights rounded by torch to 16 bits: checks the Go decoders/rounding
            for dt in ("BF16", "F16"):
                write_safetensors(os.path.join(args.out, "%s.weights.%s.safetensors" % (arch, dt.lower())),
                                  [(n, q) for n, q in model.named_parameters()], {"format": "pt"}, dt)
        for case, B, Fr, H, W, L, chunk, text_len in cases:
            if text_len != arch_text_len:
                with open(os.path.join(args.out, case + ".config.json"), "w") as f:
                    json.dump(dict(cfg, text_len=text_len), f, indent=2)
                    f.write("\n")
            C = p["in_dim"]
            x = torch.randn(B, C, Fr, H, W, generator=gen).requires_grad_(True)
            t = torch.rand(B, Fr, generator=gen) * 1000  # a different timestep per frame
            ctx = torch.randn(B, L, p["text_dim"], generator=gen)
            cot = torch.randn(B, C, Fr, H, W, generator=gen)
            # Wan2.1 (wan/modules/model.py, WanModel.forward): context = text_embedding(stack([cat([u,
            # u.new_zeros(text_len - u.size(0), u.size(1))]) for u in context]))
            ctx_wan = torch.cat([ctx, ctx.new_zeros(B, text_len - L, p["text_dim"])], 1)
            model.zero_grad(set_to_none=True)
            out = model(x, t, ctx_wan, chunk=chunk)
            (out * cot).sum().backward()
            write_safetensors(os.path.join(args.out, case + ".inputs.safetensors"),
                              [("x", x), ("t", t), ("context", ctx), ("cotangent", cot)])
            grads = [("grad." + n, q.grad) for n, q in model.named_parameters()]
            assert all(g is not None for _, g in grads), "a parameter got no gradient"
            write_safetensors(os.path.join(args.out, case + ".expect.safetensors"),
                              [("out", out), ("grad.x", x.grad)] + grads,
                              {"arch": arch, "chunk_frames": chunk, "text_len": text_len, "torch": torch.__version__})
            print("%-12s %-5s B=%d F=%d H=%d W=%d L=%d of text_len %d chunk=%d |out|=%.4g |grad.x|=%.4g params=%d" % (
                case, arch, B, Fr, H, W, L, text_len, chunk, out.norm().item(), x.grad.norm().item(), len(names)))


if __name__ == "__main__":
    main()
