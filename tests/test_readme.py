"""The README's 'define your own problem' example runs as written and its step does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def test_readme_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Define your own bilevel problem\n\n```python\n(.*?)```", text, re.S).group(1)
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    m = ns["metrics"]
    assert m["meta_step"] == 1.0 and m["hypergrad_norm"] > 0
    assert 0.75 <= m["weight_min"] <= m["weight_max"] <= 1.25


def quick_start_commands() -> list[str]:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("python -m recipes.")]


def test_every_quick_start_command_runs(tmp_path):
    """Each `python -m recipes.` line of the README's quick start, in order, in a fresh directory, with its length
    shrunk (a debug-size run of 150 frames; 2 noisy-label epochs): so the README cannot drift from the code."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    shrink = {"recipes.tempo": " --preset debug --steps 150 --run.video_every 0",
              "recipes.noisy_labels": " --epochs 2", "recipes.plot": ""}
    commands = quick_start_commands()
    assert len(commands) >= 4 and {c.split()[2] for c in commands} <= set(shrink), commands
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    for command in commands:
        line = command.replace("python", sys.executable, 1) + shrink[command.split()[2]]
        p = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{command}\n{p.stderr[-2000:]}"
        if command.split()[2] == "recipes.tempo":
            summary = json.loads(p.stdout.strip().splitlines()[-1])
            assert (tmp_path / summary["logdir"] / "checkpoint.pt").exists()
    assert sorted(p.parent.name for p in tmp_path.glob("runs/gym_Pendulum-v1/*/0")) == ["dreamerv2", "tempo"]
