"""The run directory, kept consistent whatever happens to the process (crash, kill -9, Ctrl-C).

    lock                     held (flock) by the one process that writes the directory; holds its pid
    config.json              the run's config, plus `history`: the safe changes made on resumes
    checkpoint.pt            the newest checkpoint; checkpoint.prev.pt the one before (a fallback if it is unreadable)
    progress.json            the newest checkpoint's counters (frames, updates, last eval), readable without it
    metrics.jsonl, tb/       one record per log step (TensorBoard: the same scalars)
    replay/*.npz             the episodes (`envs.Replay`), names sorted by creation time
    eval_*.gif               evaluation videos

A directory has one writer: `hold(dir)` takes an exclusive `fcntl.flock` on its `lock` file, which the kernel
releases when the process ends however it ends (kill -9 leaves no stale lock); a second process is refused in one
line naming the holder's pid.

Every file is written atomically (temp file, fsync, rename). A rerun either resumes from the newest readable
checkpoint or starts clean, and says which: on resume, whatever the dead process wrote after that checkpoint
(metrics records, TensorBoard events, episode files, videos) is dropped, so no step is duplicated or orphaned;
with no checkpoint at all, the files of the attempt that never checkpointed are removed first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT, PREVIOUS, LOCK, PROGRESS = "checkpoint.pt", "checkpoint.prev.pt", "lock", "progress.json"
RUN_FILES = ("config.json", "metrics.jsonl", "tb", "replay", CHECKPOINT, PREVIOUS, PROGRESS)


class RunDirError(Exception):
    """The directory cannot be used as asked: reported as one line, before anything is written."""


def _fsync_dir(path: Path) -> None:
    try:  # make a rename durable; not every platform/filesystem supports it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_bytes(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def hold(path: Path, what: str = "run") -> Iterator[None]:
    """Be the one process that writes the directory `path` (created if needed) while the block runs; another
    holder is a one-line RunDirError naming its pid."""
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / LOCK, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunDirError(f"{path} is in use by another {what} (process {holder}); wait for it to end or stop it, "
                          "or use another directory") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()  # closing releases the lock


def holder(path: Path) -> int | None:
    """The pid of the process that holds `path` (`hold`), or None; reads only, never takes the lock (taking it,
    even for a moment, could turn away a process starting just then). The pid is the one the holder wrote into
    `lock`; it counts only while that process is alive and, where /proc shows it (Linux), has the file open, so a
    dead holder's pid reused by another process is not mistaken for a holder."""
    try:
        pid = int((path / LOCK).read_text().strip())
    except (OSError, ValueError):  # no lock file, or no pid in it
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        return pid
    except OSError:  # no such process
        return None
    lock = (path / LOCK).resolve()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # no /proc (not Linux): alive is all one can tell
        return pid
    for fd in fds:
        with contextlib.suppress(OSError):  # fds come and go while we look
            if Path(os.readlink(fd)) == lock:
                return pid
    return None


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    # -- reading --------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES) or bool(self.videos())

    def has_checkpoint(self) -> bool:
        return any((self.path / name).exists() for name in (CHECKPOINT, PREVIOUS))

    def videos(self) -> list[Path]:
        return sorted(self.path.glob("eval_*.gif")) if self.path.is_dir() else []

    def saved_config(self) -> dict[str, Any]:
        """config.json as a dict; a missing or unreadable file is a one-line RunDirError."""
        path = self.path / "config.json"
        try:
            data = json.loads(path.read_bytes().decode())
        except FileNotFoundError:
            raise RunDirError(f"{path} is missing, so the checkpoint next to it cannot be resumed; "
                              "use another --logdir") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunDirError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:80]}); "
                              "use another --logdir") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path} does not hold a config object; use another --logdir")
        return data

    def load_checkpoint(self, device: torch.device | str = "cpu") -> tuple[dict[str, Any], Path] | None:
        """(state, file) of the newest readable checkpoint, falling back to the previous one with a one-line
        warning; None if there is none; a RunDirError if checkpoints exist but none is readable."""
        failures = []
        for name in (CHECKPOINT, PREVIOUS):
            path = self.path / name
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location=device, weights_only=False)
                if not isinstance(state, dict) or "counters" not in state:
                    raise ValueError("not a checkpoint of this recipe")
            except Exception as e:  # noqa: BLE001 - any unreadable file: one line, then the fallback
                failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}")
                print(f"warning: {path} is unreadable ({failures[-1]}); trying the previous checkpoint",
                      file=sys.stderr)
                continue
            return state, path
        if failures:
            raise RunDirError(f"no readable checkpoint in {self.path} ({'; '.join(failures)}); "
                              "use another --logdir to start over")
        return None

    # -- making it consistent ---------------------------------------------------------------------------
    def start_clean(self) -> list[str]:
        """Remove the files of an attempt that never wrote a checkpoint (nothing else); return their names."""
        removed = []
        for name in RUN_FILES:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
                removed.append(name + "/")
            elif path.exists():
                path.unlink()
                removed.append(name)
        for path in self.videos() + sorted(self.path.glob("*.tmp")):
            path.unlink()
            removed.append(path.name)
        return removed

    def roll_back_to(self, state: dict[str, Any]) -> dict[str, int]:
        """Drop what the dead process wrote after the checkpoint `state`: episode files newer than its last one,
        videos of later steps, interrupted temp files. (metrics.jsonl and TensorBoard are cut by MetricsLog.)"""
        step = state["counters"]["step"]
        last = state["replay"]["last_file"]
        episodes = [p for p in (self.path / "replay").glob("*.npz")
                    if p.name.endswith(".tmp.npz") or last is None or p.name > last]
        videos = [p for p in self.videos() if _video_step(p) is None or _video_step(p) > step]
        for p in [*episodes, *videos, *self.path.glob("*.tmp")]:
            p.unlink()
        return {"episodes": len(episodes), "videos": len(videos)}

    # -- writing ------------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write checkpoint.pt atomically, keeping the one before as checkpoint.prev.pt."""
        path = self.path / CHECKPOINT
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, self.path / PREVIOUS)
        os.replace(tmp, path)
        _fsync_dir(self.path)
        # after the checkpoint: a crash in between leaves the counters behind it, never ahead
        atomic_write_text(self.path / PROGRESS, json.dumps(state["counters"]))

    def progress(self) -> dict[str, Any] | None:
        """The counters of the newest checkpoint (step, updates, episodes, last_eval, ...) from its small sidecar
        file, without loading the checkpoint; None before the first one. A run directory from before the sidecar
        existed (or with an unreadable one) falls back to loading the checkpoint."""
        try:
            data = json.loads((self.path / PROGRESS).read_text())
            if isinstance(data, dict) and "step" in data:
                return data
        except (OSError, ValueError):
            pass
        try:
            loaded = self.load_checkpoint() if self.has_checkpoint() else None
        except RunDirError:
            return None
        return None if loaded is None else loaded[0]["counters"]

    def last_logged(self, key: str, tail: int = 65536) -> dict[str, Any] | None:
        """The newest metrics.jsonl record that has `key` (e.g. 'fps': a running trial's frames and rate since its
        sitting began), from the file's last `tail` bytes; None if there is none. Reads only: a line being
        written (cut short) does not parse and is passed over."""
        try:
            with open(self.path / "metrics.jsonl", "rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - tail, 0))
                lines = f.read().splitlines()
        except OSError:
            return None
        for raw in reversed(lines):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and key in rec:
                return rec
        return None

    def write_config(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.json", json.dumps(data, indent=2, allow_nan=False))


def _video_step(path: Path) -> int | None:
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return None


class MetricsLog:
    """metrics.jsonl (one record per log step) + TensorBoard. On resume, records past the checkpoint are dropped
    (TensorBoard: `purge_step`), so no step is duplicated; lines that do not parse (a line cut by a kill, binary
    garbage) are dropped with one warning."""

    def __init__(self, logdir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = logdir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            keep, bad = [], 0
            for raw in self.path.read_bytes().splitlines():
                try:
                    rec = json.loads(raw.decode())
                    step = rec["step"]
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    bad += 1
                    continue
                if step <= resume_step:
                    keep.append(raw.decode())
            if bad:
                print(f"warning: {self.path}: dropped {bad} unreadable line(s)", file=sys.stderr)
            atomic_write_text(self.path, "".join(f"{line}\n" for line in keep))
        self.file = open(self.path, "a")  # noqa: SIM115
        self.tb = SummaryWriter(str(logdir / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
        self.file.write(json.dumps(clean, allow_nan=False) + "\n")
        self.file.flush()
        for k, v in clean.items():
            if k != "step" and isinstance(v, int | float):
                self.tb.add_scalar(k, v, record["step"])
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def save_video(frames: list[np.ndarray], path: Path) -> None:
    import imageio.v2 as imageio

    tmp = path.with_name(path.stem + ".tmp.gif")
    imageio.mimsave(tmp, frames, duration=0.05, loop=0)
    os.replace(tmp, path)
