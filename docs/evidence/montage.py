"""An evaluation video as one still: evenly spaced frames of a run's `eval_*.gif` in a grid, to read what a policy
does (e.g. whether a cartpole_swingup policy balances the pole or spins it) beside its return.

    python docs/evidence/montage.py RUN/eval_000100000.gif OUT.png [--frames 24] [--columns 8] [--zoom 2]
"""

from __future__ import annotations

import argparse

import imageio.v2 as imageio
import numpy as np


def montage(frames: list[np.ndarray], n: int, columns: int, zoom: int) -> np.ndarray:
    """`n` evenly spaced frames (first and last included) in rows of `columns`, each pixel `zoom`x`zoom`."""
    picked = [np.asarray(frames[i])[..., :3] for i in np.linspace(0, len(frames) - 1, n).round().astype(int)]
    blank = np.zeros_like(picked[0])
    picked += [blank] * (-len(picked) % columns)  # fill the last row
    rows = [np.concatenate(picked[r:r + columns], 1) for r in range(0, len(picked), columns)]
    return np.concatenate(rows, 0).repeat(zoom, 0).repeat(zoom, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gif")
    p.add_argument("out")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--zoom", type=int, default=2)
    a = p.parse_args()
    if min(a.frames, a.columns, a.zoom) < 1:
        p.error(f"--frames {a.frames}, --columns {a.columns}, --zoom {a.zoom}: each must be at least 1")
    imageio.imwrite(a.out, montage(imageio.mimread(a.gif), a.frames, a.columns, a.zoom))


if __name__ == "__main__":
    main()
