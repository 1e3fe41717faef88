#!/usr/bin/env python3
"""Runs by hand the mutants go-gremlins left alive or called "not covered", against a package's
whole test suite (docs/reliability.md, scripts/mutation.sh).

gremlins runs each mutant against a subset of the tests where the suite is minutes long, and it
calls a mutant "not covered" when its coverage map has no block at the mutant's position, which
happens to every `case` condition of an expression switch even when the tests run it. This script
applies each such mutant exactly as gremlins would (the same token swap at the same line:column)
to a scratch copy of the working tree, runs `go test` on the package (all its tests, or the -run /
-skip given), and says KILLED (a test failed or timed out), LIVED (all passed) or NOT VIABLE (it
does not build). A "not covered" mutant runs first against the subset gremlins used (LOG with
.flags for .log, written by mutation.sh) and against the whole suite only if it lives through it.
The working tree is never touched.

  scripts/mutation_rerun.py LOG FILE [--run RE] [--skip RE] [--timeout S]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

# gremlins v0.6.0 internal/engine/mappings.go, the mutators enabled by default
SWAPS = {
    "ARITHMETIC_BASE": {"+": "-", "-": "+", "*": "/", "/": "*", "%": "*"},
    "CONDITIONALS_BOUNDARY": {">=": ">", ">": ">=", "<=": "<", "<": "<="},
    "CONDITIONALS_NEGATION": {"==": "!=", "!=": "==", ">=": "<", ">": "<=", "<=": ">", "<": ">="},
    "INCREMENT_DECREMENT": {"++": "--", "--": "++"},
    "INVERT_NEGATIVES": {"-": "+"},
}
LINE = re.compile(r"^\s*(LIVED|NOT COVERED|TIMED OUT)\s+(\w+) at (\S+?):(\d+):(\d+)")


def mutate(src: bytes, line: int, col: int, kind: str) -> bytes:
    lines = src.split(b"\n")
    text = lines[line - 1].decode()
    raw = lines[line - 1]
    i = col - 1  # gremlins' column is go/token's: bytes from 1
    swaps = SWAPS[kind]
    for tok in sorted(swaps, key=len, reverse=True):
        if raw[i:i + len(tok)] == tok.encode():
            lines[line - 1] = raw[:i] + swaps[tok].encode() + raw[i + len(tok):]
            return b"\n".join(lines)
    raise SystemExit(f"no {kind} operator at {line}:{col}: {text!r}")


def copy_tree(scratch):
    """Copies the working tree's tracked and unignored files into scratch."""
    files = subprocess.check_output(["git", "ls-files", "-co", "--exclude-standard", "-z"]).split(b"\0")
    for f in files:
        if not f:
            continue
        f = f.decode()
        if not os.path.isfile(f):
            continue
        dst = os.path.join(scratch, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(f, dst)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("file")
    ap.add_argument("--run", default="")
    ap.add_argument("--skip", default="")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--source", help="the file as gremlins mutated it (its line:column refer to this copy)")
    ap.add_argument("--commit", help="the tree gremlins ran on (default: LOG's .commit, else the working tree)")
    a = ap.parse_args()
    root = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
    os.chdir(root)
    base = os.path.basename(a.file)
    mutants = []
    for l in open(a.log, encoding="utf-8"):
        m = LINE.match(l)
        if m and m.group(3) == base:
            mutants.append((m.group(1), m.group(2), int(m.group(4)), int(m.group(5))))
    if not mutants:
        print(f"{a.file}: nothing to rerun")
        return 0
    scratch = tempfile.mkdtemp(prefix="fewstep-mutrerun-")
    try:
        commit = a.commit
        side = re.sub(r"\.log$", ".commit", a.log)
        if not commit and side != a.log and os.path.exists(side):
            commit = open(side).read().strip()
        if commit:  # the tree gremlins ran on, whatever the working tree is now (a rebase moves it)
            arch = subprocess.run(["git", "archive", commit], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", scratch], input=arch, check=True)
            print(f"{a.file}: the tree of {commit[:12]}", flush=True)
            a.source = None
        else:
            copy_tree(scratch)
        target = os.path.join(scratch, a.file)
        if a.source:  # the tree may have moved on since gremlins ran (a rebase): mutate its copy
            src = open(a.source, "rb").read()
            if src != open(target, "rb").read():
                print(f"{a.file} changed since gremlins ran: mutating the copy it ran on, {a.source}")
                open(target, "wb").write(src)
        orig = open(target, "rb").read()
        cmd = ["nice", "-n", "19", "timeout", str(a.timeout), "go", "test", "-count=1", "-p", "1", "-failfast"]
        pkg = "./" + os.path.dirname(a.file)
        # first the subset gremlins ran (LOG's .flags, written by mutation.sh), for the mutants it
        # did not run; then, for those that live through it, the whole suite (or --run/--skip)
        first = None
        flags = re.sub(r"\.log$", ".flags", a.log)
        if flags != a.log and os.path.exists(flags):
            first = cmd + open(flags).read().split() + [pkg]
        if a.run:
            cmd.append("-run=" + a.run)
        if a.skip:
            cmd.append("-skip=" + a.skip)
        cmd.append(pkg)

        def judge(c):
            p = subprocess.run(c, cwd=scratch, capture_output=True, text=True)
            out = p.stdout + p.stderr
            if p.returncode == 0:
                return "LIVED"
            if "[build failed]" in out or "[setup failed]" in out:
                return "NOT VIABLE"
            if p.returncode == 124:
                return "KILLED (timed out)"
            m = re.search(r"--- FAIL: (\S+)", out)
            return "KILLED by " + (m.group(1) if m else "a failing test run")

        counts = {}
        for status, kind, line, col in mutants:
            open(target, "wb").write(mutate(orig, line, col, kind))
            res = "LIVED"
            if first and status == "NOT COVERED":
                res = judge(first)
                if res.startswith("KILLED"):
                    res += " (gremlins' subset)"
            if res == "LIVED":
                res = judge(cmd)
            key = "NOT VIABLE" if res == "NOT VIABLE" else res.split(" ")[0]
            counts[key] = counts.get(key, 0) + 1
            print(f"{a.file}:{line}:{col} {kind} (gremlins: {status}): {res}", flush=True)
            open(target, "wb").write(orig)
        print(f"{a.file} rerun ({' '.join(cmd[5:])}): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
