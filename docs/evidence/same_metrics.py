"""Before/after identity of a refactor: the same `recipes.tempo` command in two checkouts, metrics compared.

    python docs/evidence/same_metrics.py OLD_CHECKOUT [recipe args...]

Runs the command (default: the `debug` preset, 600 frames, seed 0) once with PYTHONPATH=OLD_CHECKOUT and once
with this checkout, one thread each, and compares every metrics.jsonl record key by key, bit for bit. Wall-clock
keys (fps, time_*) are skipped; keys only one side logs are listed. Exit 1 when any shared value differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ["--task", "cartpole_swingup", "--preset", "debug", "--run.steps", "600", "--seed", "0",
           "--run.video_every", "0"]
CLOCK = ("fps", "seconds")


def run(checkout: Path, args: list[str], logdir: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "recipes.tempo", *args, "--logdir", str(logdir)], cwd=checkout, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def compare(old: list[dict], new: list[dict]) -> dict:
    assert [r["step"] for r in old] == [r["step"] for r in new], "different logging steps"
    differ, only, same = [], set(), 0
    for a, b in zip(old, new, strict=True):
        for k in a.keys() | b.keys():
            if k.endswith(CLOCK) or "/time_" in k:
                continue
            if k not in a or k not in b:
                only.add(k)
            elif a[k] == b[k]:
                same += 1
            else:
                differ.append({"step": a["step"], "key": k, "old": a[k], "new": b[k]})
    return {"records": len(old), "values_identical": same, "values_different": differ, "keys_on_one_side": sorted(only)}


def main() -> int:
    old_checkout, args = Path(sys.argv[1]).resolve(), sys.argv[2:] or DEFAULT
    with tempfile.TemporaryDirectory() as tmp:
        out = compare(run(old_checkout, args, Path(tmp) / "old"), run(ROOT, args, Path(tmp) / "new"))
    print(json.dumps({"args": args, "old": str(old_checkout), **out}, indent=1))
    return 1 if out["values_different"] else 0


if __name__ == "__main__":
    sys.exit(main())
