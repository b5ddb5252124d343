"""TEMPO inside the DreamerV2 training loop (paper Algorithm 1).

    python -m recipes.tempo --task finger_spin                 # TEMPO, preset from task + device
    python -m recipes.tempo --task finger_spin --weighting none   # plain DreamerV2 (the baseline)

Loop: prefill the replay with `prefill` agent steps of random actions and do `pretrain` updates; then every
`train_every` agent steps (DreamerV2's units: one agent step is `action_repeat` frames) one world-model
update through the bilevel trainer (weights -> θ update -> α update) followed by one actor-critic update
from the posterior states of that same pass; evaluate the policy mode every `eval_every` frames.
Re-running with the same `--logdir` resumes; Ctrl-C saves a checkpoint and exits.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recipes.cli import Resolved, check_precision, preflight, resolve, resume_config
from recipes.config import Config
from recipes.progress import Progress
from recipes.run import Run
from recipes.rundir import MetricsLog, RunDir, RunDirError, hold, save_video
from recipes.usage import UsageError


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's pre-emption, `kill`) handled like Ctrl-C: checkpoint, then exit."""


class Interrupts:
    """Ctrl-C and SIGTERM as exceptions, raised at once except inside `held()`: a frame with the update it calls
    for, or the writing of its record and checkpoint, runs to its end first. So a checkpoint holds whole updates
    (never the world model's step without the actor-critic's) and a frame counter that matches the replay. Handlers
    are installed explicitly (a shell's background job ignores SIGINT otherwise), from the main thread only (a Ray
    Tune trial runs in a worker thread and is stopped by its stop file), and put back on exit."""

    def __init__(self) -> None:
        self.holding = False
        self.pending: KeyboardInterrupt | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        stop = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if not self.holding:
            raise stop
        self.pending = self.pending or stop

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            stop, self.pending = self.pending, None
            raise stop


def run_eval(run: Run, logdir: Path) -> float:
    ret, frames = run.evaluate()
    while run.next_eval <= run.step:
        run.next_eval += run.cfg.run.eval_every
    if frames:
        save_video(frames, logdir / f"eval_{run.step:09d}.gif")
    return ret


def open_run(cfg: Config, rundir: RunDir, loaded: tuple[dict, Path] | None, changes: dict,
             notice: str | None) -> Run:
    """Resume from the checkpoint (dropping what was written after it) or start clean, and say which."""
    logdir = rundir.path
    if loaded is None:
        if rundir.exists():
            removed = rundir.start_clean()
            print(f"starting clean: {logdir} held no checkpoint (an attempt that stopped before its first one); "
                  f"removed {', '.join(removed)}", file=sys.stderr)
        elif notice:
            print(notice, file=sys.stderr)
        logdir.mkdir(parents=True, exist_ok=True)
        history: list = []
    else:
        state, path = loaded
        dropped = rundir.roll_back_to(state)
        history = rundir.saved_config().get("history", [])
        c = state["counters"]
        print(f"resuming {logdir} from {path.name} at step {c['step']} ({c['updates']} updates); dropped what was "
              f"written after it: {dropped['episodes']} episode file(s), {dropped['videos']} video(s)",
              file=sys.stderr)
    run = Run(cfg, logdir)
    if loaded is not None:
        run.restore(loaded[0])
        run.apply_learning_rates()  # the optimizers' saved states hold the old ones
    if changes:
        history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": run.step,
                        "changed": {k: list(v) for k, v in changes.items()}})
        print("changed on resume: " + ", ".join(f"{k} {o} -> {n}" for k, (o, n) in changes.items()), file=sys.stderr)
    rundir.write_config({"task": cfg.env.task, "method": cfg.method, "seed": cfg.run.seed,
                         "precision_resolved": run.precision.mode,
                         "world_model_precision_resolved": run.wm_precision.mode, **cfg.model_dump(mode="json"),
                         "history": history})
    return run


def train(cfg: Config, rundir: RunDir, loaded: tuple[dict, Path] | None = None, changes: dict | None = None,
          notice: str | None = None, on_log: Callable[[dict[str, Any]], None] | None = None,
          until: int | None = None, stop_file: Path | None = None) -> int:
    """Algorithm 1 on one run directory; `on_log` receives every metrics record as it is written (a sweep
    reports them to Ray Tune). `until` ends this sitting at that many frames (with a checkpoint and a metrics
    record) though the run aims at `run.steps`: a later call goes on from there; so does `stop_file`, as soon as that
    file exists (how a sweep's Ctrl-C ends its trials with a checkpoint). Returns the exit code."""
    with Interrupts() as stops:
        return _train(stops, cfg, rundir, loaded, changes, notice, on_log, until, stop_file)


def _train(stops: Interrupts, cfg: Config, rundir: RunDir, loaded: tuple[dict, Path] | None, changes: dict | None,
           notice: str | None, on_log: Callable[[dict[str, Any]], None] | None, until: int | None,
           stop_file: Path | None) -> int:
    try:
        run = open_run(cfg, rundir, loaded, changes or {}, notice)
    except KeyboardInterrupt as e:
        print("\ninterrupted before training started; nothing to save", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    logdir, r = rundir.path, cfg.run
    stop = r.steps if until is None else min(r.steps, until)
    log = MetricsLog(logdir, run.step if loaded is not None else None)
    progress = Progress(r.steps, run.step, r.progress_every, frames_per_update=r.train_every * run.repeat)
    t_start, step_start = time.time(), run.step
    obs, state = run.env.reset(), None
    run.replay.add(obs, np.zeros(run.env.action_dim, np.float32))
    ep_ret, last_ckpt = 0.0, run.step
    try:
        if run.eval_due():  # the untrained agent's score at step 0, or the evaluation a stop interrupted
            run.last_eval = run_eval(run, logdir)
            log.write({"step": run.step, "eval_return": run.last_eval})
            if on_log is not None:
                on_log({"step": run.step, "eval_return": run.last_eval})
        while run.step < stop:
            if stop_file is not None and stop_file.exists():  # asked to end this sitting (a sweep's Ctrl-C)
                rundir.save_checkpoint(run.checkpoint())
                print(f"stopped: {stop_file} exists; checkpoint saved at step {run.step}", file=sys.stderr)
                break
            with stops.held():  # a frame and the update it calls for: a checkpoint holds both or neither
                if run.agent_step < r.prefill:
                    action = run.random_action()
                else:
                    action, state = run.act(obs, state, "explore")
                obs = run.env.step(action)
                run.replay.add(obs, action)
                ep_ret += float(obs["reward"])
                prev, prev_agent = run.step, run.agent_step
                run.step += run.repeat
                if obs["is_last"]:
                    run.episodes += 1
                    run.record({"train_return": ep_ret})
                    obs, state, ep_ret = run.env.reset(), None, 0.0
                    run.replay.add(obs, np.zeros(run.env.action_dim, np.float32))
                if run.agent_step >= r.prefill and len(run.replay) >= cfg.replay.length:
                    due = int(run.agent_step // r.train_every > prev_agent // r.train_every)
                    if run.updates < r.pretrain:  # a stop ends the pretraining between two updates (it may be long),
                        run.owed_updates += due  # the resumed run goes on with it; the frames' own updates wait
                        while run.updates < r.pretrain and stops.pending is None:
                            progress.update(run.step, run.updates, run.last_eval, pretrain=(run.updates, r.pretrain))
                            run.train_once()
                        progress.update(run.step, run.updates, run.last_eval, pretrain=(run.updates, r.pretrain))
                        done = run.updates >= r.pretrain
                        due, run.owed_updates = (run.owed_updates, 0) if done else (0, run.owed_updates)
                    for _ in range(due):
                        run.train_once()
            evaluated = run.eval_due()  # outside: a stop cuts an evaluation short, the resumed run redoes it
            if evaluated:
                run.last_eval = run_eval(run, logdir)
            with stops.held():
                if evaluated or run.step // r.log_every > prev // r.log_every or run.step >= stop:
                    fps = (run.step - step_start) / max(time.time() - t_start, 1e-9)
                    rec = {"step": run.step, "fps": fps, "updates": run.updates, "episodes": run.episodes,
                           "replay_steps": len(run.replay), **run.replay.counters()}
                    rec.update({k: float(np.mean(v)) for k, v in run.pending.items()})
                    if evaluated:
                        rec["eval_return"] = run.last_eval
                    run.pending.clear()
                    log.write(rec)
                    if on_log is not None:
                        on_log(rec)
                progress.update(run.step, run.updates, run.last_eval, force=evaluated)
                if run.step - last_ckpt >= r.checkpoint_every or run.step >= stop:
                    rundir.save_checkpoint(run.checkpoint())
                    last_ckpt = run.step
    except KeyboardInterrupt as e:
        rundir.save_checkpoint(run.checkpoint())
        progress.close()
        log.close()
        print(f"\ninterrupted: checkpoint saved at step {run.step}; rerun the same command to resume",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except FloatingPointError as e:
        rundir.save_checkpoint(run.checkpoint())
        progress.close()
        log.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    progress.close()
    log.close()
    summary = {"logdir": str(logdir), "step": run.step, "updates": run.updates, "episodes": run.episodes,
               "eval_return": run.last_eval, "seconds": round(time.time() - t_start, 1), "method": cfg.method,
               "precision": run.precision.mode, "world_model_precision": run.wm_precision.mode,
               **({"paused_until": until} if run.step < r.steps else {})}
    print(json.dumps(summary))
    return 0


def settle(res: Resolved, rundir: RunDir, load: bool) -> tuple[Config, dict, tuple[dict, Path] | None]:
    """(config, changes on resume, loaded checkpoint): a resume takes the run's own settings plus the safe changes
    asked for; every check of the input runs here. `load=False` decides without reading the checkpoint itself."""
    resuming = rundir.has_checkpoint()
    loaded = rundir.load_checkpoint() if resuming and load else None
    if resuming:
        saved = rundir.saved_config()
        cfg, changes = resume_config(saved, res.explicit, res.preset)
        check_precision(saved, cfg)
    else:
        cfg, changes = res.cfg, {}
    preflight(cfg)
    return cfg, changes, loaded


def main(argv: list[str] | None = None, on_log: Callable[[dict[str, Any]], None] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        res = resolve(argv)
        rundir = RunDir(Path(res.cfg.run.logdir).expanduser())
        cfg, changes, _ = settle(res, rundir, load=False)  # bad input: refused before anything is written
        if res.print_config:
            print(json.dumps({"preset": cfg.preset, "method": cfg.method, **cfg.model_dump(mode="json")}, indent=1))
            return 0
        if res.stop_file is not None and res.stop_file.exists():  # the sweep was stopped before this trial began
            print(f"not started: {res.stop_file} exists; nothing written", file=sys.stderr)
            return 0
        with hold(rundir.path):
            # decided again as the one writer: the holder before may have written a checkpoint meanwhile
            cfg, changes, loaded = settle(res, rundir, load=True)
            return train(cfg, rundir, loaded, changes, res.notice, on_log, res.until, res.stop_file)
    except (UsageError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
