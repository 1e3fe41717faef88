# The PyTorch peer of `fewstep sample` at full size: the same few-step sampling (predict
# x0 = x − σ·v, re-noise to the next level; shift 5, t = 1000, 750, 500, 250) of one video of latents
# [16, F, H, W] through shared/reference/wan_ref.py's WanRef (bf16 autocast, fp32 weights, SDPA),
# from the same checkpoint and prompt embeddings. Prints milliseconds per video (after a warm-up
# video) and the peak memory as JSON.
#   python3 scripts/ref_sample.py --wan-ref wan_ref.py --weights W.safetensors --emb E.safetensors
import argparse, importlib.util, json, os, sys, time
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diffusers_wan import load_file  # noqa: E402  (the numpy safetensors reader)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wan-ref", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--emb", required=True)
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--height", type=int, default=60)
    ap.add_argument("--width", type=int, default=104)
    ap.add_argument("--videos", type=int, default=2)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("wan_ref", args.wan_ref)
    wr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wr)
    dev = "cuda"
    t0 = time.time()
    sd = load_file(args.weights)
    p = dict(wr.PRESETS["wan1.3b"])
    model = wr.WanRef(p)
    model.load_state_dict(sd, strict=True)
    model = model.to(dev).eval()
    del sd
    load_s = time.time() - t0
    ctx = load_file(args.emb)["context"][:1].to(dev)
    sig = [5 * u / (1 + 4 * u) for u in (1.0, 0.75, 0.5, 0.25)]
    F_, H, W = args.frames, args.height, args.width
    g = torch.Generator(device=dev).manual_seed(0)

    def video():
        x = torch.randn(1, 16, F_, H, W, device=dev, generator=g)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for i, s in enumerate(sig):
                v = model(x, torch.full((1, F_), 1000 * s, device=dev), ctx).float()
                x0 = x - s * v
                if i + 1 < len(sig):
                    x = (1 - sig[i + 1]) * x0 + sig[i + 1] * torch.randn(x.shape, device=dev, generator=g)
        return x0.cpu()

    torch.cuda.reset_peak_memory_stats()
    video()  # warm-up
    torch.cuda.synchronize()
    ms = []
    for _ in range(args.videos):
        s = time.time()
        video()
        torch.cuda.synchronize()
        ms.append(1000 * (time.time() - s))
    print(json.dumps({"engine": "wan_ref.py (PyTorch %s, bf16 autocast, SDPA)" % torch.__version__, "frames": F_, "height": H, "width": W,
                      "tokens": F_ * H * W // 4, "steps": 4, "ms_per_video": sorted(ms)[len(ms) // 2], "ms_all": ms,
                      "max_memory_allocated_GiB": torch.cuda.max_memory_allocated() / 2**30,
                      "max_memory_reserved_GiB": torch.cuda.max_memory_reserved() / 2**30, "load_s": load_s}), flush=True)


if __name__ == "__main__":
    main()
