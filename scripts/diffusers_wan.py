# A PyTorch module with diffusers' WanTransformer3DModel's module tree and forward (text-to-video:
# no image embedder, no added K/V), written from diffusers' transformer_wan.py for a machine without
# diffusers, to check that a Diffusers-layout export of fewstep (`fewstep export --layout diffusers`)
# loads strictly by diffusers' names and gives fewstep's output:
#   python3 scripts/diffusers_wan.py --export DIR --fewstep BIN [--device cuda]
# It makes random inputs, runs `fewstep model forward` on them and this module (fp32), and prints
# the relative error as JSON.
import argparse, json, math, os, subprocess, sys, tempfile
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_file(path):  # safetensors → {name: float32 tensor} (F32, BF16, F16); no safetensors package needed
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, e in hdr.items():
        if k == "__metadata__":
            continue
        a, b = e["data_offsets"]
        raw = np.frombuffer(data[a:b], dtype={"F32": np.float32, "BF16": np.uint16, "F16": np.float16}[e["dtype"]])
        if e["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[k] = torch.from_numpy(raw.astype(np.float32).reshape(e["shape"]).copy())
    return out


def save_file(ts, path):  # {name: tensor} → safetensors, F32
    hdr, blobs, off = {}, [], 0
    for k, t in ts.items():
        b = t.detach().float().contiguous().numpy().tobytes()
        hdr[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def sdpa(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # torch < 2.0
    return torch.softmax(s, -1) @ v


class RMSNorm(nn.Module):  # diffusers' RMSNorm(dim, eps, elementwise_affine=True) over the whole projection
    def __init__(self, d, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):  # to_q/to_k/to_v/to_out.0, norm_q/norm_k "rms_norm_across_heads"
    def __init__(self, d, heads, eps):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.to_out = nn.ModuleList([nn.Linear(d, d), nn.Dropout(0.0)])
        self.norm_q, self.norm_k = RMSNorm(d, eps), RMSNorm(d, eps)

    def forward(self, x, ctx=None, rotary=None):
        src = x if ctx is None else ctx
        q, k, v = self.norm_q(self.to_q(x)), self.norm_k(self.to_k(src)), self.to_v(src)
        q, k, v = (t.unflatten(2, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # B, H, S, hd
        if rotary is not None:
            def rot(t):  # pairs (0, 1), (2, 3), ... as complex numbers times the rotary phases
                c = torch.view_as_complex(t.to(torch.float64).unflatten(3, (-1, 2)))
                return torch.view_as_real(c * rotary).flatten(3, 4).type_as(t)
            q, k = rot(q), rot(k)
        o = sdpa(q, k, v)
        return self.to_out[1](self.to_out[0](o.transpose(1, 2).flatten(2, 3)))


class FeedForward(nn.Module):  # net.0.proj (Linear + tanh-GELU), net.1 dropout, net.2 Linear
    def __init__(self, d, ffn):
        super().__init__()
        proj = nn.Module()
        proj.proj = nn.Linear(d, ffn)
        self.net = nn.ModuleList([proj, nn.Dropout(0.0), nn.Linear(ffn, d)])

    def forward(self, x):
        return self.net[2](self.net[1](F.gelu(self.net[0].proj(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, d, ffn, heads, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps, elementwise_affine=False)
        self.attn1 = Attention(d, heads, eps)
        self.norm2 = nn.LayerNorm(d, eps, elementwise_affine=True)  # cross_attn_norm
        self.attn2 = Attention(d, heads, eps)
        self.norm3 = nn.LayerNorm(d, eps, elementwise_affine=False)
        self.ffn = FeedForward(d, ffn)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)

    def forward(self, x, ctx, temb, rotary):  # temb: B, 6, D
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.attn1(h, rotary=rotary) * gate).type_as(x)
        x = x + self.attn2(self.norm2(x.float()).type_as(x), ctx=ctx)
        h = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x)


class WanTransformer3DModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        heads, hd = cfg["num_attention_heads"], cfg["attention_head_dim"]
        d, self.cfg, self.hd = heads * hd, cfg, hd
        cin, cout, eps = cfg["in_channels"], cfg["out_channels"], cfg["eps"]
        self.patch_embedding = nn.Conv3d(cin, d, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        ce = nn.Module()
        ce.time_embedder = nn.Module()
        ce.time_embedder.linear_1, ce.time_embedder.linear_2 = nn.Linear(cfg["freq_dim"], d), nn.Linear(d, d)
        ce.time_proj = nn.Linear(d, 6 * d)
        ce.text_embedder = nn.Module()
        ce.text_embedder.linear_1, ce.text_embedder.linear_2 = nn.Linear(cfg["text_dim"], d), nn.Linear(d, d)
        self.condition_embedder = ce
        self.blocks = nn.ModuleList([Block(d, cfg["ffn_dim"], heads, eps) for _ in range(cfg["num_layers"])])
        self.norm_out = nn.LayerNorm(d, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(d, cout * 4)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, d) / d ** 0.5)

    def rotary(self, f, h, w, device):  # WanRotaryPosEmbed: head dim split t / h / w, theta 10000
        hw_dim = 2 * (self.hd // 6)
        dims = [self.hd - 2 * hw_dim, hw_dim, hw_dim]
        parts = []
        for n, dd, shape in zip((f, h, w), dims, ((f, 1, 1), (1, h, 1), (1, 1, w))):
            inv = 1.0 / (10000 ** (torch.arange(0, dd, 2, dtype=torch.float64, device=device) / dd))
            ang = torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv)
            parts.append(torch.polar(torch.ones_like(ang), ang).view(*shape, -1).expand(f, h, w, -1))
        return torch.cat(parts, -1).reshape(1, 1, f * h * w, -1)

    def timestep_proj(self, t):  # Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        half = self.cfg["freq_dim"] // 2
        ex = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        e = t[:, None].float() * ex[None]
        return torch.cat([torch.cos(e), torch.sin(e)], -1)

    def forward(self, x, timestep, ctx):  # x B, C, F, H, W; timestep [B]; ctx B, L, text_dim
        B, C, Fr, H, W = x.shape
        f, h, w = Fr, H // 2, W // 2
        rotary = self.rotary(f, h, w, x.device)
        hs = self.patch_embedding(x).flatten(2).transpose(1, 2)
        ce = self.condition_embedder
        temb = ce.time_embedder.linear_2(F.silu(ce.time_embedder.linear_1(self.timestep_proj(timestep))))
        tproj = ce.time_proj(F.silu(temb)).unflatten(1, (6, -1))
        ctx = ce.text_embedder.linear_2(F.gelu(ce.text_embedder.linear_1(ctx), approximate="tanh"))
        for b in self.blocks:
            hs = b(hs, ctx, tproj, rotary)
        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hs = self.proj_out((self.norm_out(hs.float()) * (1 + scale) + shift).type_as(hs))
        hs = hs.reshape(B, f, h, w, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hs.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    ap.add_argument("--fewstep", required=True)
    ap.add_argument("--device", default="cpu", help="fewstep's device (this module runs fp32 on the CPU)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", type=int, default=8)
    args = ap.parse_args()
    cfg = json.load(open(os.path.join(args.export, "config.json")))
    assert cfg["_class_name"] == "WanTransformer3DModel", cfg.get("_class_name")
    m = WanTransformer3DModel(cfg)
    sd = load_file(os.path.join(args.export, "diffusion_pytorch_model.safetensors"))
    m.load_state_dict(sd, strict=True)  # every name diffusers' module has, nothing else
    torch.manual_seed(0)
    L = cfg.get("text_len", 512)
    x = torch.randn(2, cfg["in_channels"], args.frames, args.size, args.size)
    t = torch.tensor([700.0, 250.0])
    ctx = torch.randn(2, L, cfg["text_dim"])
    with torch.no_grad():
        want = m(x, t, ctx)
    tmp = tempfile.mkdtemp()
    inp, out = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
    save_file({"x": x.contiguous(), "t": t[:, None].expand(2, args.frames).contiguous(), "context": ctx.contiguous()}, inp)
    subprocess.run([args.fewstep, "model", "forward", "--weights", os.path.join(args.export, "diffusion_pytorch_model.safetensors"),
                    "--model-config", os.path.join(args.export, "config.json"), "--inputs", inp, "--out", out,
                    "--device", args.device], check=True, stdout=sys.stderr)
    got = load_file(out)["out"]
    rel = ((got.double() - want.double()).norm() / want.double().norm()).item()
    print(json.dumps({"check": "diffusers WanTransformer3DModel (written from transformer_wan.py) vs fewstep model forward",
                      "export": args.export, "fewstep_device": args.device, "keys": len(sd), "strict_load": True,
                      "shape": list(want.shape), "rel_error": rel, "max_abs": (got - want).abs().max().item(),
                      "out_norm": want.norm().item()}), flush=True)
    sys.exit(0 if rel < 1e-4 else 1)


if __name__ == "__main__":
    main()
