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
