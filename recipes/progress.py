"""Progress a user sees: a tqdm bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import datetime
import sys
import time


class Progress:
    """A tqdm bar on a terminal. Without one (CI logs, `nohup`, Ray workers) a plain line on stdout every `every`
    seconds, at each evaluation and at the end: frames, fps since the previous line, updates, the last
    evaluation return and the ETA at that fps."""

    def __init__(self, total: int, initial: int, every: float) -> None:
        self.total, self.every = total, every
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="frame", dynamic_ncols=True)
        self.shown = self.line_step = self.start_step = initial
        self.line_time = self.start_time = time.monotonic()

    def update(self, step: int, updates: int, last_eval: float | None, force: bool = False) -> None:
        if self.bar is not None:
            self.bar.update(step - self.shown)
            self.bar.set_postfix({"updates": updates, "eval": fmt(last_eval)}, refresh=False)
            self.shown = step
            return
        now = time.monotonic()
        if not force and now - self.line_time < self.every:
            return
        if step > self.line_step:  # the recent rate (training is slower than the random prefill)
            fps = (step - self.line_step) / max(now - self.line_time, 1e-9)
        else:  # no frames since the last line (pretraining updates): the rate since the start
            fps = (step - self.start_step) / max(now - self.start_time, 1e-9)
        left = max(self.total - step, 0)
        eta = str(datetime.timedelta(seconds=round(left / fps))) if fps > 0 else ("0:00:00" if not left else "-")
        print(f"progress frames={step}/{self.total} fps={fps:.1f} updates={updates} eval={fmt(last_eval)} "
              f"eta={eta}", flush=True)
        self.line_time, self.line_step = now, step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"

