#!/usr/bin/env python3
"""wan_ref.py's timing (same model, inputs and step as its main()) with CPU time beside wall time.

On a machine shared with other work, wall time measures the neighbours as much as the code; with one
thread, the process CPU time (time.process_time) is the work done. Usage:
  OMP_NUM_THREADS=1 scripts/wan_ref_cpu.py --preset tiny --frames 8 --height 8 --width 8 --ctx 32 [--ref PATH]
Prints JSON: fwd_ms, fwd_cpu_ms, train_step_ms, train_step_cpu_ms (medians).
"""
import argparse, importlib.util, json, os, time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--ref", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference", "wan_ref.py"))
ap.add_argument("--preset", default="tiny")
ap.add_argument("--frames", type=int, default=8)
ap.add_argument("--height", type=int, default=8)
ap.add_argument("--width", type=int, default=8)
ap.add_argument("--ctx", type=int, default=32)
ap.add_argument("--reps", type=int, default=5)
args = ap.parse_args()
spec = importlib.util.spec_from_file_location("wan_ref", args.ref)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

p = ref.PRESETS[args.preset]
torch.manual_seed(0)
model = ref.WanRef(p)
x = torch.randn(1, p["in_dim"], args.frames, args.height, args.width)
ctx = torch.randn(1, args.ctx, p["text_dim"])
tt = torch.full((1,), 700.0)[:, None].expand(1, args.frames)
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)


def fwd():
    with torch.no_grad():
        model(x, tt, ctx)


def step():
    v = model(x, tt, ctx)
    v.float().pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn, reps, warm=2):
    for _ in range(warm):
        fn()
    w, c = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        w.append(1000 * (time.perf_counter() - w0))
        c.append(1000 * (time.process_time() - c0))
    return sorted(w)[reps // 2], sorted(c)[reps // 2]


res = dict(preset=args.preset, frames=args.frames, threads=torch.get_num_threads(), torch=torch.__version__)
res["fwd_ms"], res["fwd_cpu_ms"] = timed(fwd, args.reps)
res["train_step_ms"], res["train_step_cpu_ms"] = timed(step, args.reps)
print(json.dumps(res), flush=True)
