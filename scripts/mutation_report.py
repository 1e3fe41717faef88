#!/usr/bin/env python3
"""The table of docs/reliability.md's mutation report from scripts/mutation.sh's logs: per file, the
mutants gremlins made, those it killed, and the outcome of the rerun (scripts/mutation_rerun.py)
of those it left alive or called not covered; then every mutant still alive.

  scripts/mutation_report.py [LOGDIR]      # default /tmp/fewstep-mutation
"""
import glob
import os
import re
import sys

GLINE = re.compile(r"^\s*(KILLED|LIVED|NOT COVERED|TIMED OUT|NOT VIABLE)\s+(\w+) at (\S+?):(\d+):(\d+)")
RLINE = re.compile(r"^(\S+?):(\d+):(\d+) (\w+) \(gremlins: ([A-Z ]+)\): (.*)$")


def main():
    logdir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/fewstep-mutation"
    rows, alive = [], []
    tot = dict(n=0, killed=0, lived=0, nv=0, unrun=0)
    for log in sorted(glob.glob(os.path.join(logdir, "*.log"))):
        name = os.path.basename(log)[:-4]  # e.g. trainer_optim.go
        pkg, _, base = name.partition("_")
        path = f"{pkg}/{base}"
        g = {}
        for l in open(log, encoding="utf-8"):
            m = GLINE.match(l)
            if m:
                g[(int(m.group(4)), int(m.group(5)), m.group(2))] = m.group(1)
        if not g:
            continue
        r = {}
        rerun = log[:-4] + ".rerun"
        if os.path.exists(rerun):
            for l in open(rerun, encoding="utf-8"):
                m = RLINE.match(l.strip())
                if m:
                    r[(int(m.group(2)), int(m.group(3)), m.group(4))] = m.group(6)
        after = {}  # mutants that lived, run again against a test added for them (LOG's .after)
        if os.path.exists(log[:-4] + ".after"):
            for l in open(log[:-4] + ".after", encoding="utf-8"):
                m = RLINE.match(l.strip())
                if m:
                    after[(int(m.group(2)), int(m.group(3)), m.group(4))] = m.group(6)
        c = dict(n=len(g), killed=0, lived=0, nv=0, unrun=0, gk=0, rk=0, ak=0)
        for k, st in g.items():
            res = r.get(k)
            if st == "KILLED" or (st == "TIMED OUT" and res is None):
                c["killed"] += 1
                c["gk"] += 1
            elif st == "NOT VIABLE":
                c["nv"] += 1
            elif res is None:
                if st == "LIVED":
                    c["lived"] += 1
                    alive.append(f"{path}:{k[0]}:{k[1]} {k[2]} (gremlins)")
                else:
                    c["unrun"] += 1
            elif res.startswith("KILLED"):
                c["killed"] += 1
                c["rk"] += 1
            elif after.get(k, "").startswith("KILLED"):
                c["killed"] += 1
                c["ak"] += 1
                print(f"{path}:{k[0]}:{k[1]} {k[2]}: lived through the suite, {after[k]} (added for it)", file=sys.stderr)
            elif res == "NOT VIABLE":
                c["nv"] += 1
            else:
                c["lived"] += 1
                alive.append(f"{path}:{k[0]}:{k[1]} {k[2]} (gremlins: {st}, whole suite: {res})")
        viable = c["n"] - c["nv"]
        rows.append(f"| `{path}` | {c['n']} | {c['gk']} | {c['rk']} | {c['ak']} | {c['lived']} | {c['nv']} | {c['unrun']} | "
                    f"{c['killed']}/{viable} ({100 * c['killed'] / max(viable, 1):.1f}%) |")
        for k in tot:
            tot[k] += c[k]
    print("| file | mutants | killed by gremlins | killed in the rerun | killed by a test added for it | lived | not viable | not run | killed / viable |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    viable = tot["n"] - tot["nv"]
    print(f"| all | {tot['n']} | | | | {tot['lived']} | {tot['nv']} | {tot['unrun']} | "
          f"{tot['killed']}/{viable} ({100 * tot['killed'] / max(viable, 1):.1f}%) |")
    print("\nalive:")
    print("\n".join(alive) or "none")


if __name__ == "__main__":
    main()
