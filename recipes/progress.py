"""Progress a user sees: a tqdm bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import datetime
import sys
import time


class Progress:
    """A tqdm bar on a terminal. Without one (CI logs, `nohup`, Ray workers) a plain line on stdout every `every`
    seconds, at each evaluation and at the end: frames, fps since the previous line, updates, the last
    evaluation return and the ETA at that fps.

    While the pretraining updates run (`pretrain=(done, total)`) no frame moves, so a frame rate says nothing:
    the line shows `pretrain=done/total` and the ETA from the pretraining's seconds per update, times the updates
    still to come: the rest of the pretraining plus, for the frames left, one per `frames_per_update` frames
    (updates dominate a training step; without `frames_per_update` and with frames left the ETA is '-').
    """

    def __init__(self, total: int, initial: int, every: float, frames_per_update: float | None = None) -> None:
        self.frames_per_update = frames_per_update
        self.total, self.every = total, every
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="frame", dynamic_ncols=True)
        self.shown = self.line_step = self.start_step = initial
        self.line_time = self.start_time = time.monotonic()
        self.pretrain_start: tuple[float, int] | None = None  # (time, updates done) when pretraining began

    def update(self, step: int, updates: int, last_eval: float | None, force: bool = False,
               pretrain: tuple[int, int] | None = None) -> None:
        now = time.monotonic()
        if pretrain is not None and self.pretrain_start is None:
            self.pretrain_start = (now, pretrain[0])
        if self.bar is not None:
            self.bar.update(step - self.shown)
            post = {"updates": updates, "eval": fmt(last_eval)}
            if pretrain is not None:
                post["pretrain"] = f"{pretrain[0]}/{pretrain[1]}"
            self.bar.set_postfix(post, refresh=pretrain is not None)  # frames stand still while pretraining
            self.shown = step
            return
        if not force and now - self.line_time < self.every:
            return
        if step > self.line_step:  # the recent rate (training is slower than the random prefill)
            fps = (step - self.line_step) / max(now - self.line_time, 1e-9)
        else:  # no frames since the last line: the rate since the start
            fps = (step - self.start_step) / max(now - self.start_time, 1e-9)
        left = max(self.total - step, 0)
        if pretrain is not None:
            eta = self.pretrain_eta(now, pretrain, left)
            phase = f" pretrain={pretrain[0]}/{pretrain[1]}"
        else:
            eta = str(datetime.timedelta(seconds=round(left / fps))) if fps > 0 else ("0:00:00" if not left else "-")
            phase = ""
        print(f"progress frames={step}/{self.total} fps={fps:.1f} updates={updates}{phase} eval={fmt(last_eval)} "
              f"eta={eta}", flush=True)
        self.line_time, self.line_step = now, step

    def pretrain_eta(self, now: float, pretrain: tuple[int, int], frames_left: int) -> str:
        assert self.pretrain_start is not None
        t0, done0 = self.pretrain_start
        done, total = pretrain
        if done <= done0 or (frames_left and not self.frames_per_update):
            return "-"
        per_update = (now - t0) / (done - done0)
        updates_left = total - done + (frames_left / self.frames_per_update if frames_left else 0)
        return str(datetime.timedelta(seconds=round(per_update * updates_left)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"

