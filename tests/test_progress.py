"""`recipes.progress.Progress` without a terminal: the lines and their ETA, under a fake clock."""

from __future__ import annotations

import re

import pytest

from recipes import progress as progress_mod
from recipes.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    monkeypatch.setattr(progress_mod.sys.stderr, "isatty", lambda: False)
    return c


def lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("progress ")]


def test_frame_eta_from_the_recent_rate(clock, capsys):
    p = Progress(total=1000, initial=0, every=30)
    clock.t += 10
    p.update(100, 0, None)  # before `every`: silent
    clock.t += 30
    p.update(400, 5, 12.5)
    (line,) = lines(capsys)
    # 400 frames in 40 s: 10 fps, 600 frames left -> 60 s
    assert line == "progress frames=400/1000 fps=10.0 updates=5 eval=12.5 eta=0:01:00"


def test_pretraining_shows_its_count_and_an_eta_from_the_update_rate(clock, capsys):
    """The README's main job: all frames are prefill, then 100 pretraining updates. Frames stand still, so the
    ETA comes from the update rate (it used to say 0:00:00 for minutes)."""
    p = Progress(total=2000, initial=0, every=30)
    clock.t += 20
    p.update(2000, 0, 0.0, pretrain=(0, 100))  # pretraining starts at t0 + 20
    for i in range(1, 11):
        clock.t += 4  # 4 s per update
        p.update(2000, i, 0.0, pretrain=(i, 100))
    out = lines(capsys)
    assert len(out) == 1, out  # one line: the first 30 s passed during the 3rd update
    m = re.match(r"progress frames=2000/2000 fps=[\d.]+ updates=3 pretrain=3/100 eval=0.0 eta=(\S+)$", out[0])
    assert m and m.group(1) == "0:06:28"  # 97 updates left at 4 s each
    clock.t += 30
    p.update(2000, 11, 0.0, pretrain=(11, 100), force=True)
    # 70 s for 11 updates since pretraining began, 89 left: 566 s
    assert lines(capsys)[0].endswith("pretrain=11/100 eval=0.0 eta=0:09:26")


def test_pretraining_with_frames_left_counts_their_updates_too(clock, capsys):
    """Frames left after pretraining: one update per `frames_per_update` frames at the pretraining's rate."""
    p = Progress(total=5000, initial=0, every=1, frames_per_update=10)
    p.update(1000, 0, None, pretrain=(0, 10))
    clock.t += 5
    p.update(1000, 1, None, pretrain=(1, 10))
    # 5 s per update; 9 pretraining updates + 4000 frames / 10 = 409 updates left
    assert lines(capsys)[-1].endswith("pretrain=1/10 eval=- eta=0:34:05")
    q = Progress(total=5000, initial=0, every=1)  # the rate of frames to updates unknown: no guess
    q.update(1000, 0, None, pretrain=(0, 10))
    clock.t += 5
    q.update(1000, 1, None, pretrain=(1, 10))
    assert lines(capsys)[-1].endswith("pretrain=1/10 eval=- eta=-")
