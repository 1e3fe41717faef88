#!/usr/bin/env python3
"""Issue 17's must-show, read off the tables of scripts/objective_tables.sh (OUT/NAME/table.json).

For every student row at k steps it compares CondAcc and FD with the teacher row at the guidance
the student was distilled from and the same k: "win" when the student is better by more than the
larger of the two rows' spreads (sample std over the evaluation seeds), "lose" when worse by more
than that, else "level". With --vs PREFIX_A:PREFIX_B (e.g. adv:dmd) it compares the students of two
prefixes seed by seed (adv0 with dmd0, ...) the same way. Long (streamed) rows have no FD: their
CondAcc is compared with the same student's row at the training length.

Usage: scripts/objective_verdict.py OUT/adv/table.json [--vs adv:dmd]
"""
import json
import re
import sys


def verdict(better, diff, spread):
    if abs(diff) <= spread:
        return "level"
    return "win" if better else "lose"


def main(argv):
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__)
    t = json.load(open(argv[0]))
    rows = t["rows"]
    w = t.get("distill_cfg") or 1
    teacher = {r["steps"]: r for r in rows if r["model"] == "teacher" and r["cfg"] == w}
    frames = max((r["frames"] for r in rows if r["model"] == "data"), default=0)
    print(f"against the teacher at w = {w:g}, same k (win/lose: by more than the larger spread)")
    print(f"{'student':14s} {'k':>2s}  {'CondAcc':>21s} {'':5s}  {'FD':>21s}")
    for r in rows:
        if r["model"] in ("data", "teacher") or r["frames"] != frames:
            continue
        tr = teacher.get(r["steps"])
        if tr is None:
            continue
        d = r["cond_acc"] - tr["cond_acc"]
        ca = verdict(d > 0, d, max(r["cond_acc_std"], tr["cond_acc_std"]))
        fd = "-"
        if r.get("fd") is not None and tr.get("fd") is not None:
            e = r["fd"] - tr["fd"]
            fd = f"{r['fd']:.3f} vs {tr['fd']:.3f} {verdict(e < 0, e, max(r['fd_std'], tr['fd_std'])):5s}"
        print(f"{r['model']:14s} {r['steps']:2d}  {r['cond_acc']:.3f} vs {tr['cond_acc']:.3f} {ca:5s}  {fd}")
    for r in rows:  # long rows: CondAcc against the same student at the training length
        if r["model"] in ("data", "teacher") or r["frames"] == frames:
            continue
        base = next((b for b in rows if b["model"] == r["model"] and b["steps"] == r["steps"] and b["frames"] == frames), None)
        if base is None:
            continue
        d = r["cond_acc"] - base["cond_acc"]
        v = verdict(d > 0, d, max(r["cond_acc_std"], base["cond_acc_std"]))
        print(f"{r['model']:14s} {r['steps']:2d}  {r['frames']} frames: CondAcc {r['cond_acc']:.3f} vs {base['cond_acc']:.3f} at {frames} ({v}), "
              f"stability {r['stability']:.4f} vs {base['stability']:.4f}")
    if len(argv) >= 3 and argv[1] == "--vs":
        a, b = argv[2].split(":")
        print(f"{a} against {b}, seed by seed, FD")
        by = {(r["model"], r["steps"]): r for r in rows if r["frames"] == frames}
        for (m, k), r in sorted(by.items(), key=lambda x: (x[0][1], x[0][0])):
            g = re.fullmatch(re.escape(a) + r"(\d+)", m)
            if not g or (b + g.group(1), k) not in by or r.get("fd") is None:
                continue
            o = by[(b + g.group(1), k)]
            e = r["fd"] - o["fd"]
            print(f"{m:8s} vs {b + g.group(1):8s} k = {k}: {r['fd']:.3f} vs {o['fd']:.3f} {verdict(e < 0, e, max(r['fd_std'], o['fd_std']))}")


if __name__ == "__main__":
    main(sys.argv[1:])
