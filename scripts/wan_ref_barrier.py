#!/usr/bin/env python3
"""Runs wan_ref.py's main with its timings held back, so that torch.compile's compiles can run
beside other work on the machine while the timings run alone (scripts/gpu-speed.sh).

    python3 wan_ref_barrier.py PATH/wan_ref.py [--skip-fwd] ARGS...   (BARRIER=file in the environment)

Each timing of wan_ref.py (its timed(fn)) first calls fn once untimed (the compile happens there),
prints how long that took, waits until the file $BARRIER exists, then times exactly as wan_ref.py
does. --skip-fwd: the forward's timing is skipped (fwd_ms null): another process times the compiled
forward, this one only the train step. Nothing else of wan_ref.py changes."""
import importlib.util
import os
import sys
import time


def main():
    path, args = sys.argv[1], sys.argv[2:]
    skip_fwd = "--skip-fwd" in args
    args = [a for a in args if a != "--skip-fwd"]
    barrier = os.environ["BARRIER"]
    spec = importlib.util.spec_from_file_location("wan_ref", path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    orig, calls = ref.timed, [0]

    def timed(fn, reps=10, warm=3):
        calls[0] += 1
        if skip_fwd and calls[0] == 1:
            return None
        t0 = time.time()
        fn()
        if ref.torch.cuda.is_available():
            ref.torch.cuda.synchronize()
        print("wan_ref_barrier: timing %d: first call %.1f s (the compile); waiting for %s" % (calls[0], time.time() - t0, barrier),
              file=sys.stderr, flush=True)
        while not os.path.exists(barrier):
            time.sleep(0.2)
        return orig(fn, reps, warm)

    ref.timed = timed
    sys.argv = [path] + args
    ref.main()


if __name__ == "__main__":
    main()
