"""Episode replay buffer with crash-safe on-disk storage (DreamerV2 style).

Episodes are accumulated step by step and, once ``is_last`` is seen, written as one compressed ``.npz`` per
episode. Writes are atomic (temp file in the same directory, fsync, ``os.replace``), so a crash can leave at
most a stray ``*.tmp.npz`` which the loader skips with a warning; a truncated/corrupt final file is skipped
the same way. On construction all complete episodes in the directory are loaded newest first up to the
capacity, so a resumed run sees its earlier experience.

Capacity is counted in stored steps. When exceeded, the oldest episodes are dropped from memory; the files
stay on disk, the run's experience record, up to `disk_capacity` steps (default: the same capacity), beyond
which the oldest files are deleted. Non-finite observations, rewards or actions are stored as 0, counted and
warned about once. File names are
``YYYYmmddTHHMMSS-<id>-<length>.npz`` where ``<id>`` is 32 hex chars (ns timestamp + random bits) so that
names sort chronologically even within one second; ``<length>`` counts stored steps (obs), not transitions.
Images stay uint8 in memory and in sampled batches; float conversion belongs to the model.
"""

from __future__ import annotations

import collections
import datetime
import io
import os
import pathlib
import secrets
import time
import warnings
from typing import Any

import numpy as np

OBS_KEYS = ("image", "state")
REQUIRED_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")
# Observation keys kept for analyses only (DreamerV3's convention): stored and batched, never read by a model,
# e.g. the distractor gate of `envs.distractors`.
LOG_PREFIX = "log_"
TMP_SUFFIX = ".tmp.npz"


_last_ns = 0


def _time_ordered_id() -> tuple[int, str]:
    """Unique 32-hex id (16 hex ns timestamp + 64 random bits) that sorts by creation time.

    A random uuid4 would make names written within the same second sort arbitrarily, so "newest first"
    loading and eviction could pick the wrong episodes; a strictly increasing ns prefix fixes that.
    """
    global _last_ns
    _last_ns = max(time.time_ns(), _last_ns + 1)
    return _last_ns, f"{_last_ns:016x}{secrets.token_hex(8)}"


def _episode_length(name: str) -> int | None:
    """Length encoded in ``YYYYmmddTHHMMSS-<uuid>-<length>.npz``; None if the name does not match."""
    try:
        return int(name[: -len(".npz")].rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


class Replay:
    """Stores whole episodes and samples fixed-length chunks from within episodes.

    Args:
        directory: Where episodes are written and (on construction) loaded from.
        capacity: Maximum number of steps kept in memory (oldest episodes dropped first).
        seed: Seed of the sampling ``np.random.Generator``.
        prioritize_ends: DreamerV2 Atari trick; extends the start-index range by ``length`` and clamps, so
            chunks that end exactly at an episode end are sampled ``length + 1`` times as often.
        uniform_over: ``'episodes'`` (DreamerV2's replay: an episode uniformly, then a start within it) or
            ``'steps'`` (every valid start of every episode equally likely). They agree when all episodes have
            the same length (DMC); on Atari ``'episodes'`` samples the steps of short episodes more often.

    Every sampled chunk starts with ``is_first`` set (DreamerV2's ``_sample_sequence``): the model starts each
    chunk from the zero state and ignores the chunk's first action, wherever in an episode it starts.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        capacity: int,
        seed: int = 0,
        prioritize_ends: bool = False,
        uniform_over: str = "episodes",
        disk_capacity: int | None = None,
        batch: int = 16,
        length: int = 50,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if uniform_over not in ("episodes", "steps"):
            raise ValueError(f"uniform_over must be 'episodes' or 'steps', got {uniform_over!r}")
        self.uniform_over = uniform_over
        self.directory = pathlib.Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = int(capacity)
        self.batch, self.length = batch, length  # what `sample()` draws unless told otherwise
        self.prioritize_ends = prioritize_ends
        self._rng = np.random.default_rng(seed)
        self._episodes: collections.OrderedDict[str, dict[str, np.ndarray]] = collections.OrderedDict()
        self._steps = 0
        self._current: list[tuple[dict[str, Any], np.ndarray | None]] = []
        self._index: tuple[int, list[str], np.ndarray, np.ndarray] | None = None
        self._last_file: str | None = None
        self.disk_capacity = int(disk_capacity or capacity)
        if self.disk_capacity < 1:
            raise ValueError(f"disk_capacity must be positive, got {disk_capacity}")
        self.sanitized_steps = self.deleted_files = 0
        self._warned = False
        # every complete episode file on disk, oldest first: name -> stored steps (from the name)
        self._disk: collections.OrderedDict[str, int] = collections.OrderedDict(
            (p.name, _episode_length(p.name) or 0) for p in sorted(self.directory.glob("*.npz"))
            if not p.name.endswith(TMP_SUFFIX))
        self._load()

    # ------------------------------------------------------------------ adding
    def add(self, obs: dict[str, Any], action: np.ndarray | None = None) -> pathlib.Path | None:
        """Append one step: ``obs`` and the ``action`` that produced it (ignored/zeros when ``is_first``).

        Pass discrete actions as the one-hot vector given to ``env.step`` so all steps share one shape.

        Returns the path of the written episode file when ``obs['is_last']`` completes an episode.
        """
        if obs["is_first"]:
            if self._current:
                warnings.warn(
                    f"Replay: discarding an unfinished episode of {len(self._current)} steps (new is_first "
                    "before is_last).",
                    stacklevel=2,
                )
            self._current = []
            action = None
        elif not self._current:
            raise ValueError("Replay.add: the first step of an episode must have is_first=True")
        elif action is None:
            raise ValueError("Replay.add: an action is required for every step after the first")
        step = {k: v for k, v in obs.items()
                if k in OBS_KEYS or (k in REQUIRED_KEYS and k != "action") or k.startswith(LOG_PREFIX)}
        action = None if action is None else np.asarray(action, dtype=np.float32)
        step, action = self._sanitize(step, action)
        self._current.append((step, action))
        if obs["is_last"]:
            episode = self._stack(self._current)
            self._current = []
            path = self._write(episode)
            self._insert(path.name, episode)
            return path
        return None

    def _sanitize(self, step: dict[str, Any], action: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray | None]:
        """A NaN/inf observation, reward or action would stay in the replay and poison every batch it is in:
        store 0 in its place, count the step (`counters()`) and warn once."""
        values = {k: step[k] for k in (*OBS_KEYS, "reward") if k in step}
        bad = [k for k, v in values.items() if not np.isfinite(np.asarray(v, dtype=np.float64)).all()]
        if action is not None and not np.isfinite(action).all():
            bad.append("action")
        if not bad:
            return step, action
        self.sanitized_steps += 1
        if not self._warned:
            warnings.warn(f"Replay: non-finite {', '.join(bad)} in a step, stored as 0 (counted as "
                          "replay_sanitized_steps in the metrics; warned once)", stacklevel=3)
            self._warned = True
        step = {k: (np.nan_to_num(np.asarray(v), nan=0.0, posinf=0.0, neginf=0.0) if k in bad else v)
                for k, v in step.items()}
        if action is not None:
            action = np.nan_to_num(action, nan=0.0, posinf=0.0, neginf=0.0)
        return step, action

    def counters(self) -> dict[str, int]:
        """Bad data sanitised and episode files deleted to bound the disk, since this object was built."""
        return {"replay_sanitized_steps": self.sanitized_steps, "replay_deleted_files": self.deleted_files}

    def add_episode(self, episode: dict[str, np.ndarray]) -> pathlib.Path:
        """Store an already stacked episode (arrays with a leading time axis)."""
        episode = {k: np.asarray(v) for k, v in episode.items()}
        self._check(episode, "add_episode")
        path = self._write(episode)
        self._insert(path.name, episode)
        return path

    def pending_episode(self) -> dict[str, np.ndarray] | None:
        """The episode being collected, stacked and marked as ending here (`is_last` on its last step, not
        terminal), or None before its first transition. A checkpoint keeps it: the environment itself cannot be
        restored, so a resumed run stores it as an episode cut at the checkpoint."""
        if len(self._current) < 2:
            return None
        episode = self._stack(self._current)
        episode["is_last"] = episode["is_last"].copy()
        episode["is_last"][-1] = True
        return episode

    def last_file(self) -> str | None:
        """Name of the newest episode file written (names sort by creation time), or None."""
        return self._last_file

    @staticmethod
    def _stack(steps: list[tuple[dict[str, Any], np.ndarray | None]]) -> dict[str, np.ndarray]:
        shapes = [a.shape for _, a in steps if a is not None]
        action_shape = shapes[0] if shapes else (0,)
        actions = [np.zeros(action_shape, np.float32) if a is None else a for _, a in steps]
        episode = {"action": np.stack(actions).astype(np.float32)}
        for key in steps[0][0]:
            values = np.stack([np.asarray(s[key]) for s, _ in steps])
            if key == "image":
                values = values.astype(np.uint8)
            elif key in ("state", "reward"):
                values = values.astype(np.float32)
            elif key.startswith("is_"):
                values = values.astype(bool)
            episode[key] = values
        return episode

    def _write(self, episode: dict[str, np.ndarray]) -> pathlib.Path:
        ns, uid = _time_ordered_id()
        stamp = datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uid}-{len(episode['action'])}.npz"
        final = self.directory / name
        tmp = self.directory / (name[: -len(".npz")] + TMP_SUFFIX)
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **episode)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._disk[name] = len(episode["action"])
        self._bound_disk()
        try:  # Make the rename itself durable; not supported on every platform/filesystem.
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
        return final

    def _bound_disk(self) -> None:
        """Delete the oldest episode files while the files on disk hold more than `disk_capacity` steps (the
        newest file always stays); ones still in memory are dropped from it too."""
        total = sum(self._disk.values())
        while total > self.disk_capacity and len(self._disk) > 1:
            name, n = self._disk.popitem(last=False)
            (self.directory / name).unlink(missing_ok=True)
            total -= n
            self.deleted_files += 1
            old = self._episodes.pop(name, None)
            if old is not None:
                self._steps -= len(old["action"])
                self._index = None

    def _insert(self, name: str, episode: dict[str, np.ndarray]) -> None:
        self._last_file = max(name, self._last_file or "")
        self._episodes[name] = episode
        self._steps += len(episode["action"])
        self._index = None
        # Keep at least the newest episode even if it alone exceeds the capacity.
        while self._steps > self.capacity and len(self._episodes) > 1:
            _, old = self._episodes.popitem(last=False)
            self._steps -= len(old["action"])

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _check(episode: dict[str, np.ndarray], source: str) -> None:
        missing = [k for k in REQUIRED_KEYS if k not in episode]
        if missing or not any(k in episode for k in OBS_KEYS):
            raise ValueError(f"{source}: missing keys {missing or list(OBS_KEYS)}")
        lengths = {k: len(v) for k, v in episode.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{source}: inconsistent lengths {lengths}")

    def _load(self) -> None:
        files = sorted(self.directory.glob("*.npz"), reverse=True)  # time-ordered names: newest first
        loaded: list[tuple[str, dict[str, np.ndarray]]] = []
        steps = 0
        for path in files:
            if steps >= self.capacity:
                break
            if path.name.endswith(TMP_SUFFIX):
                warnings.warn(f"Replay: skipping leftover temp file {path} (interrupted write)", stacklevel=3)
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
                with np.load(io.BytesIO(data)) as npz:
                    episode = {k: npz[k] for k in npz.files}  # reading each member verifies its CRC
                self._check(episode, path.name)
                expected = _episode_length(path.name)
                if expected is not None and expected != len(episode["action"]):
                    raise ValueError(f"length {len(episode['action'])} != {expected} in the name")
            except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never fatal.
                warnings.warn(f"Replay: skipping unreadable episode file {path}: {e!r}", stacklevel=3)
                continue
            loaded.append((path.name, episode))
            steps += len(episode["action"])
        for name, episode in reversed(loaded):  # insert oldest first so eviction order is by age
            self._insert(name, episode)

    # ------------------------------------------------------------------ sampling
    def _build_index(self, length: int) -> tuple[int, list[str], np.ndarray, np.ndarray]:
        names = [n for n, ep in self._episodes.items() if len(ep["action"]) >= length]
        lengths = np.array([len(self._episodes[n]["action"]) for n in names], dtype=np.int64)
        # Number of start draws per episode: valid starts, plus `length` clamped extras with prioritize_ends.
        draws = lengths - length + 1 + (length if self.prioritize_ends else 0)
        return length, names, lengths, np.cumsum(draws)

    def sample(self, batch: int | None = None, length: int | None = None) -> dict[str, np.ndarray]:
        """Sample ``batch`` chunks of ``length`` consecutive steps, each within a single stored episode.

        An episode with at least ``length`` steps is drawn (uniformly, or in proportion to its number of starts,
        see ``uniform_over``), then a start uniformly among its valid starts (with ``prioritize_ends`` the range is
        extended past the end and clamped). ``is_first`` is set at each chunk's first step; ``episode_step`` [B, T]
        is each step's index in its stored episode. Returns ``[B, T, ...]`` arrays; images stay uint8. Defaults:
        the replay's own ``batch`` and ``length``.
        """
        batch = self.batch if batch is None else batch
        length = self.length if length is None else length
        if self._index is None or self._index[0] != length:
            self._index = self._build_index(length)  # cached until the next episode is inserted
        _, names, lengths, cumdraws = self._index
        if not names:
            have = max((len(ep["action"]) for ep in self._episodes.values()), default=0)
            raise ValueError(
                f"Replay.sample: no stored episode has >= {length} steps ({len(self._episodes)} episodes, "
                f"longest {have}); collect more data or reduce the sequence length."
            )
        counts = np.diff(np.concatenate([[0], cumdraws]))  # start draws per episode
        if self.uniform_over == "episodes":
            which = self._rng.integers(0, len(names), size=batch)
            offsets = self._rng.integers(0, counts[which])
        else:
            draws = self._rng.integers(0, cumdraws[-1], size=batch)
            which = np.searchsorted(cumdraws, draws, side="right")
            offsets = draws - (cumdraws[which] - counts[which])
        starts = np.minimum(offsets, lengths[which] - length)
        chunks = [self._episodes[names[i]] for i in which]
        pairs = list(zip(chunks, starts, strict=True))
        out = {key: np.stack([ep[key][s : s + length] for ep, s in pairs]) for key in chunks[0]}
        out["is_first"] = out["is_first"].copy()
        out["is_first"][:, 0] = True
        # Where in its stored episode each step is (0 = the episode's first step, which `is_first` no longer
        # tells apart from a chunk start): for analyses of which steps a weighting favours, never for training.
        out["episode_step"] = (starts[:, None] + np.arange(length)).astype(np.int32)
        return out

    # ------------------------------------------------------------------ state
    def rng_state(self) -> dict[str, Any]:
        """Sampler RNG state (JSON/pickle friendly) for exact resumption."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state

    def stats(self) -> dict[str, float]:
        """In-memory size: ``steps``, ``episodes``, ``bytes`` (array payload) and ``bytes_per_step``."""
        nbytes = sum(v.nbytes for ep in self._episodes.values() for v in ep.values())
        return {
            "steps": self._steps,
            "episodes": len(self._episodes),
            "bytes": nbytes,
            "bytes_per_step": nbytes / self._steps if self._steps else 0.0,
        }

    def __len__(self) -> int:
        return self._steps

    @property
    def episodes(self) -> list[dict[str, np.ndarray]]:
        """Stored episodes, oldest first (read-only view; do not mutate the arrays)."""
        return list(self._episodes.values())
