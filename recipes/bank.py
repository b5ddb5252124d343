"""A sweep's finished runs kept where the loss of its machine cannot reach them: `recipes.sweep DIR --bank BANK`.

Why: a campaign on shared machines outlives its sittings, and its scratch directory does not always survive from
one to the next (on these hosts `/work/campaign` has been lost twice, every run with it). The bank is a folder
meant to be committed (e.g. under `docs/evidence/`): for each *finished* trial it keeps the three small files that
say what the run did, `config.json`, `metrics.jsonl` and `progress.json` (about 150 KB for a 1e5-frame DMC run),
not what it needs to go on (checkpoints, replay, videos, TensorBoard: tens of MB). So a lost directory costs only
the runs in flight. The bank is laid out as the sweep (`BANK/sweep.yaml`, `BANK/<task>/<method>/<seed>/...`), so
`python -m recipes.report BANK` reports on the banked runs as they are.

A sitting with `--bank` banks each trial as it finishes, what has finished before it starts and again when it
ends (however it ends), and puts banked runs back into a sweep directory that lacks them: the sweep then counts
them finished and does not run them again. A banked run cannot be extended (e.g. to more frames): it has no
checkpoint. The bank never replaces a run it holds with another one at the same path; that is reported instead.
"""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Iterable
from pathlib import Path

from recipes.rundir import CHECKPOINT, PROGRESS, atomic_write_bytes, holder

__all__ = ["FILES", "banked", "deposit", "withdraw"]

# progress.json last: written last, its presence is what marks a banked run complete.
FILES = ("config.json", "metrics.jsonl", PROGRESS)


def banked(bank: Path, name: str) -> bool:
    """Whether the bank holds the whole run `name` (`<task>/<method>/<seed>[/<grid point>]`)."""
    return all((bank / name / f).is_file() for f in FILES)


def _copy(src: Path, dst: Path) -> None:
    """Copy the files of a run, each atomically, progress.json last (a copy cut short is not a run)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        data = (src / f).read_bytes()
        atomic_write_bytes(dst / f, lambda fh, data=data: fh.write(data))


def _same(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in FILES)


def deposit(root: Path, bank: Path, finished: Iterable[str], spec_file: str) -> tuple[list[str], list[str]]:
    """Bank the runs `finished` (names of trials whose run directories under `root` reached their frames) and the
    sweep's `spec_file` (its spec and sittings). Returns (names newly banked, names the bank holds as another run,
    left as they are)."""
    new, conflicts = [], []
    for name in finished:
        if banked(bank, name):
            if not _same(root / name, bank / name):
                conflicts.append(name)
            continue
        _copy(root / name, bank / name)
        new.append(name)
    if (root / spec_file).is_file():
        bank.mkdir(parents=True, exist_ok=True)  # a new bank: nothing has finished yet
        data = (root / spec_file).read_bytes()
        atomic_write_bytes(bank / spec_file, lambda fh: fh.write(data))
    return new, conflicts


def withdraw(bank: Path, root: Path, names: Iterable[str]) -> list[str]:
    """Put the banked runs among `names` back into `root` where the trial has no run there: no run directory, or one
    that never checkpointed (what a new attempt would clear anyway) and that no process holds. Returns the names
    restored."""
    out = []
    for name in names:
        run = root / name
        if not banked(bank, name) or (run / PROGRESS).exists() or (run / CHECKPOINT).exists():
            continue
        if run.exists() and holder(run) is not None:
            continue
        if run.exists():  # an attempt that never checkpointed: its files say nothing the bank does not
            shutil.rmtree(run)
        _copy(bank / name, run)
        out.append(name)
    return out
