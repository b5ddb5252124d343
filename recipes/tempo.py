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

import argparse
import datetime
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from recipes.config import PRESETS, Config, build, deep_update, format_error, parse_dotted

STEP_FLAGS = {  # CLI switch -> dotted config field
    "task": "env.task", "weighting": "tempo.weighting", "upper_loss": "tempo.upper_loss",
    "hypergrad": "tempo.bilevel.strategy", "contraction": "tempo.bilevel.contraction",
    "engine": "tempo.bilevel.engine", "weighter_inputs": "tempo.weighter_inputs", "sign": "tempo.bilevel.sign",
    "device": "run.device", "seed": "run.seed", "steps": "run.steps", "logdir": "run.logdir",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's pre-emption, `kill`) handled like Ctrl-C: checkpoint, then exit."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2, before anything is created."""


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, our format, exit 2 (not argparse's usage dump)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m recipes.tempo", description=__doc__.split("\n\n")[0],
        epilog="Any config field can be set as --section.field VALUE, e.g. --world_model.lr 1e-4 "
               "--tempo.bilevel.weighter.units 200 (see recipes/config.py).")
    p.add_argument("--task", help="finger_spin | dmc:walker_walk | atari:pong | gym:Pendulum-v1")
    p.add_argument("--preset", choices=PRESETS,
                   help="default: atari for atari:*, dmc_pixels with CUDA, else dmc_state")
    p.add_argument("--weighting", help="meta (TEMPO) | naive | none (DreamerV2)")
    p.add_argument("--upper-loss", dest="upper_loss", help="vvaml | vagram | module.path:ClassName")
    p.add_argument("--hypergrad", help="approx | unroll | implicit")
    p.add_argument("--contraction", help="terms_fd (default) | double_backward | jvp | terms_jvp | finite_difference")
    p.add_argument("--engine", help="native | higher | betty")
    p.add_argument("--weighter-inputs", dest="weighter_inputs", help="DSV | SV | S (paper §3.5)")
    p.add_argument("--sign", help="correct | official")
    p.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="environment steps (frames, after action repeat)")
    p.add_argument("--logdir", help="run directory (re-use it to resume)")
    return p


def parse_cli(argv: list[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or "." not in tok:
            raise UsageError(f"unrecognised argument {tok!r}; see --help (fields are set as --section.field VALUE)")
        if "=" in tok:
            key, val = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                raise UsageError(f"{tok} needs a value")
            key, val = tok[2:], rest[i + 1]
            i += 2
        pairs.append((key.replace("-", "_"), val))
    switches: dict[str, Any] = {}  # typed by argparse, so never re-parsed as JSON
    for name, value in vars(args).items():
        if name in STEP_FLAGS and value is not None:
            section, field = STEP_FLAGS[name].split(".", 1)
            node = switches.setdefault(section, {})
            *path, leaf = field.split(".")
            for p in path:
                node = node.setdefault(p, {})
            node[leaf] = value
    return args, deep_update(switches, parse_dotted(pairs))  # --section.field wins over a switch


def cuda_available() -> bool:
    return torch.cuda.is_available()


def choose_preset(task: str, device: str | None) -> tuple[str, str | None]:
    """(preset, notice) from the task and the device: pixel DMC is for GPUs."""
    if task.startswith("atari:"):
        return "atari", None
    if task.startswith("gym:"):
        return "dmc_state", None
    if (device or ("cuda" if cuda_available() else "cpu")) == "cuda":
        return "dmc_pixels", None
    return "dmc_state", ("notice: no CUDA device, using preset dmc_state (proprioceptive states); pixel "
                         "world-model updates are ~100x slower on CPU. Pass --preset dmc_pixels to force pixels.")


def resolve(argv: list[str]) -> tuple[Config, str | None]:
    """Validated config from the command line (nothing is created here)."""
    args, overrides = parse_cli(argv)
    task = overrides.get("env", {}).get("task", "finger_spin")
    device = overrides.get("run", {}).get("device")
    notice = None
    preset = args.preset
    if preset is None:
        preset, notice = choose_preset(task, device)
    if device is None:
        overrides.setdefault("run", {})["device"] = "cuda" if cuda_available() else "cpu"
    overrides.setdefault("env", {})["task"] = task
    try:
        cfg = build(preset, overrides)
    except ValidationError as e:
        raise UsageError(format_error(e)) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    return cfg, notice


def preflight(cfg: Config) -> None:
    """Everything that can be wrong with the input, checked before the run directory exists."""
    from envs import validate_task
    from losses import get_upper_loss

    try:
        validate_task(cfg.env.task)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.env.task.startswith("atari:") and cfg.env.obs == "state":
        raise UsageError(f"task {cfg.env.task!r} has no state observations; use --env.obs pixels")
    if cfg.run.device == "cuda" and not cuda_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    try:
        get_upper_loss(cfg.tempo.upper_loss)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--upper-loss {cfg.tempo.upper_loss!r}: {e}") from None
    logdir = Path(cfg.run.logdir).expanduser()
    if logdir.exists() and not logdir.is_dir():
        raise UsageError(f"--logdir {str(logdir)!r} exists and is not a directory")
    parent = logdir
    while not parent.exists():
        parent = parent.parent
    try:  # really try: permission bits lie for root and read-only mounts
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise UsageError(f"--logdir {str(logdir)!r} is not writable ({str(parent)!r}: {e.strerror})") from None


# ---------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def bilevel_config(cfg: Config):
    """The weighting switch picks the strategy: none/naive need no weighter; meta uses tempo.bilevel."""
    b = cfg.tempo.bilevel
    if cfg.tempo.weighting == "meta":
        return b
    return b.model_copy(update={"strategy": cfg.tempo.weighting, "sign": "correct"})


class Run:
    """All state of one training run; `loop()` runs it, `save()`/`load()` checkpoint it."""

    def __init__(self, cfg: Config, logdir: Path) -> None:
        from agents import ActorCritic
        from bilevel import BilevelTrainer
        from bilevel.precision import Precision
        from bilevel.trainer import make_optimizer
        from envs import Replay, make_env
        from losses import UpperLoss, get_upper_loss, upper_loss_class
        from worldmodels import WorldModel
        from worldmodels.tempo_problem import TempoProblem

        self.cfg, self.logdir = cfg, logdir
        self.device = torch.device(cfg.run.device)
        self.precision = Precision(self.device, cfg.run.precision)
        if self.device.type == "cpu":  # tiny values in second-order graphs hit slow denormal paths (20-50x)
            torch.set_flush_denormal(True)
        self.seed_everything(cfg.run.seed)
        e = cfg.env
        kw = dict(obs=e.obs, size=tuple(e.size), action_repeat=e.action_repeat, time_limit=e.time_limit)
        self.env = make_env(e.task, seed=cfg.run.seed, **kw)
        self.eval_env = make_env(e.task, seed=cfg.run.seed + 10_000, **kw)
        self.repeat = e.action_repeat or (4 if e.task.startswith("atari:") else 1 if e.task.startswith("gym:") else 2)
        self.replay = Replay(logdir / "replay", cfg.replay.capacity, seed=cfg.run.seed,
                             prioritize_ends=cfg.replay.prioritize_ends, uniform_over=cfg.replay.uniform_over)

        m = cfg.world_model
        self.wm = WorldModel(
            self.env.obs_space, self.env.action_dim, self.env.discrete, deter=m.deter, stoch=m.stoch,
            discrete=m.discrete, hidden=m.hidden, min_std=m.min_std, unimix=m.unimix, std_act=m.std_act,
            depth=m.depth,
            mlp_units=m.units, mlp_layers=m.layers, discount_head=m.discount_head, kl_balance=m.kl_balance,
            kl_free=m.kl_free, kl_scale=m.kl_scale,
            loss_scales={"reward": m.reward_scale, "discount": m.discount_scale},
        ).to(self.device)
        a = cfg.agent
        self.agent = ActorCritic(
            self.wm.rssm.feat_dim, self.env.action_dim, self.env.discrete, horizon=a.horizon, gamma=a.gamma,
            lambda_=a.lambda_, actor_lr=a.actor_lr, critic_lr=a.critic_lr, slow_target_every=a.slow_target_every,
            # DreamerV2 squashes replay rewards before the world model sees them (to_torch), not predictions
            actor_grad=a.actor_grad, actor_ent=a.actor_ent, actor_grad_mix=a.actor_grad_mix,
            reward_transform="none", layers=a.layers,
            units=a.units, eps=a.eps, clip=a.clip, weight_decay=a.weight_decay, use_discount_head=m.discount_head,
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.precision.mode == "16"),
        ).to(self.device)
        # Every UpperLoss normalises its values (the weighter's V inputs) with tempo.value_norm; a plain
        # user callable has no value normalisation to configure.
        cls = upper_loss_class(cfg.tempo.upper_loss)
        is_upper = isinstance(cls, type) and issubclass(cls, UpperLoss)
        self.upper = get_upper_loss(cfg.tempo.upper_loss, **({"norm": cfg.tempo.value_norm} if is_upper else {}))
        if isinstance(self.upper, torch.nn.Module):
            self.upper.to(self.device)
        self.problem = TempoProblem(self.wm, self.upper, lambda f: self.agent.value(f, slow=True),
                                         cfg.tempo.weighter_inputs)
        opt = make_optimizer(self.wm.parameters(), "adam", m.lr, m.eps, m.weight_decay)  # DreamerV2's decoupled wd
        self.trainer = BilevelTrainer(self.wm, self.problem.input_dim, bilevel_config(cfg), lower_opt=opt,
                                      lower_clip=m.clip, max_nonfinite=cfg.run.max_nonfinite,
                                      precision=self.precision)
        self.step = 0  # env frames (agent steps × action repeat)
        self.updates = 0
        self.episodes = 0
        self.next_eval = 0
        self.evals = 0
        self.last_eval: float | None = None
        self.train_returns: list[float] = []
        self.pending: dict[str, list[float]] = {}
        self.nonfinite_agent = 0
        self.nonfinite_actions = 0

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def agent_step(self) -> int:
        """Environment steps taken by the agent (DreamerV2's `step` counter; schedules and `train_every`)."""
        return self.step // self.repeat

    @staticmethod
    def seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def to_torch(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Replay [B, T] numpy -> time-major [T, B] tensors; images stay uint8 until the model."""
        out = {}
        for k, v in batch.items():
            t = torch.as_tensor(np.swapaxes(v, 0, 1))
            if t.dtype == torch.float64:
                t = t.float()
            out[k] = t.to(self.device)
        if self.cfg.agent.reward_transform == "tanh":
            out["reward"] = torch.tanh(out["reward"])
        return out

    def obs_tensor(self, obs: dict[str, Any]) -> torch.Tensor:
        key = self.wm.obs_key
        return torch.as_tensor(np.asarray(obs[key])[None]).to(self.device)  # [1, ...]

    @torch.no_grad()
    def act(self, obs: dict[str, Any], state: Any, mode: str) -> tuple[np.ndarray, Any]:
        """Filter the observation into the posterior, then act from feat(post)."""
        if state is None:
            state = (self.wm.rssm.initial(1), torch.zeros(1, self.env.action_dim, device=self.device))
        latent, prev_action = state
        embed = self.wm.encoder(self.wm.preprocess(self.obs_tensor(obs), torch.float32))
        is_first = torch.tensor([bool(obs["is_first"])], device=self.device)
        post, _ = self.wm.rssm.obs_step(latent, prev_action, embed, is_first)
        action = self.agent.policy(self.wm.rssm.feat(post), mode)  # [1, A]
        if not bool(torch.isfinite(action).all()):  # a diverged model: act randomly, the trainer reports it
            self.nonfinite_actions += 1
            action = torch.as_tensor(self.random_action(), device=self.device)[None]
        return action[0].cpu().numpy(), (post, action)

    def random_action(self) -> np.ndarray:
        if self.env.discrete:
            return np.eye(self.env.action_dim, dtype=np.float32)[np.random.randint(self.env.action_dim)]
        return np.random.uniform(-1, 1, self.env.action_dim).astype(np.float32)

    def record(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.pending.setdefault(k, []).append(float(v))

    # -- training ----------------------------------------------------------------------------------
    def train_once(self) -> None:
        """One world-model update through the bilevel trainer, then one actor-critic update."""
        batch = self.to_torch(self.replay.sample(self.cfg.replay.batch, self.cfg.replay.length))
        with self.precision.autocast():  # reduced-precision matmuls, float32 islands inside the models
            result = self.trainer.step(self.problem, batch)  # its graph is freed before imagination
        metrics, start = result.metrics, result.outputs  # posterior states [T, B, ...] of that pass
        self.record({f"wm/{k}": v for k, v in metrics.items()})
        if all(bool(torch.isfinite(v).all()) for v in start.values()):
            with self.precision.autocast():
                ac = self.agent.train_step(self.wm, start, batch["is_terminal"], step=self.agent_step)
            ac = {f"agent/{k}": float(v) for k, v in ac.items()}
            self.nonfinite_agent += int(ac.pop("agent/skipped_nonfinite"))
            self.record(ac)
        else:  # states from a skipped (non-finite) world-model step: no actor-critic update either
            self.nonfinite_agent += 1
        self.record({"agent/nonfinite_steps": self.nonfinite_agent, "nonfinite_actions": self.nonfinite_actions})
        self.updates += 1

    def evaluate(self) -> tuple[float, list[np.ndarray]]:
        frames: list[np.ndarray] = []
        returns = []
        video = self.cfg.run.video_every and self.evals % self.cfg.run.video_every == 0
        for ep in range(self.cfg.run.eval_episodes):
            obs, state, ret = self.eval_env.reset(), None, 0.0
            while True:
                if video and ep == 0:
                    frames.append(self.frame(obs))
                action, state = self.act(obs, state, "eval")
                obs = self.eval_env.step(action)
                ret += float(obs["reward"])
                if obs["is_last"]:
                    break
            returns.append(ret)
        self.evals += 1
        return float(np.mean(returns)), frames

    def frame(self, obs: dict[str, Any]) -> np.ndarray:
        if "image" in obs:
            img = obs["image"]
            return np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
        render = getattr(self.eval_env, "render", None)
        return render() if render is not None else np.zeros((64, 64, 3), np.uint8)

    # -- persistence -------------------------------------------------------------------------------
    def save(self) -> None:
        state = {
            "world_model": self.wm.state_dict(), "agent": self.agent.checkpoint(),
            "trainer": self.trainer.state_dict(),
            "upper": self.upper.state_dict() if isinstance(self.upper, torch.nn.Module) else None,
            "counters": {"step": self.step, "updates": self.updates, "episodes": self.episodes,
                         "next_eval": self.next_eval, "evals": self.evals, "last_eval": self.last_eval,
                         "nonfinite_agent": self.nonfinite_agent},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "replay": self.replay.rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        atomic_torch_save(state, self.logdir / "checkpoint.pt")

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.wm.load_state_dict(state["world_model"])
        self.agent.restore(state["agent"])
        self.trainer.load_state_dict(state["trainer"])
        if state["upper"] is not None and isinstance(self.upper, torch.nn.Module):
            self.upper.load_state_dict(state["upper"])
        c = state["counters"]
        self.step, self.updates, self.episodes = c["step"], c["updates"], c["episodes"]
        self.next_eval, self.evals, self.last_eval = c["next_eval"], c["evals"], c["last_eval"]
        self.nonfinite_agent = c["nonfinite_agent"]
        r = state["rng"]
        torch.set_rng_state(r["torch"])
        np.random.set_state(r["numpy"])
        random.setstate(r["python"])
        self.replay.set_rng_state(r["replay"])
        if r["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(r["cuda"])


class MetricsLog:
    """metrics.jsonl (one record per log step) + TensorBoard. On resume, records past the checkpoint
    are dropped so the file has no duplicate or missing steps."""

    def __init__(self, logdir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = logdir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if rec.get("step", 0) <= resume_step:
                    keep.append(line)
            atomic_write_text(self.path, "".join(f"{line}\n" for line in keep))
        self.file = open(self.path, "a")  # noqa: SIM115
        self.tb = SummaryWriter(str(logdir / "tb"))

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(k, v, record["step"])
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def save_video(frames: list[np.ndarray], path: Path) -> None:
    import imageio.v2 as imageio

    tmp = path.with_name(path.stem + ".tmp.gif")
    imageio.mimsave(tmp, frames[::2] if len(frames) > 200 else frames, duration=0.05, loop=0)
    os.replace(tmp, path)


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


def run_eval(run: Run, logdir: Path) -> float:
    ret, frames = run.evaluate()
    while run.next_eval <= run.step:
        run.next_eval += run.cfg.run.eval_every
    if frames:
        save_video(frames, logdir / f"eval_{run.step:09d}.gif")
    return ret


def train(cfg: Config, notice: str | None = None) -> int:
    logdir = Path(cfg.run.logdir).expanduser()
    ckpt = logdir / "checkpoint.pt"
    resumed = ckpt.exists()
    if resumed:  # the run's own config wins; only the step budget may be extended
        saved = Config.model_validate({k: v for k, v in json.loads((logdir / "config.json").read_text()).items()
                                       if k in Config.model_fields})
        saved.run.steps = cfg.run.steps
        cfg = saved
    if notice and not resumed:
        print(notice, file=sys.stderr)
    logdir.mkdir(parents=True, exist_ok=True)
    run = Run(cfg, logdir)
    if resumed:
        run.load(ckpt)
        print(f"resuming {logdir} at step {run.step} ({run.updates} updates, {len(run.replay)} stored steps)",
              file=sys.stderr)
    atomic_write_text(logdir / "config.json", json.dumps(
        {"task": cfg.env.task, "method": cfg.method, "seed": cfg.run.seed, "precision_resolved": run.precision.mode,
         **cfg.model_dump(mode="json")}, indent=2))
    log = MetricsLog(logdir, run.step if resumed else None)
    r = cfg.run
    progress = Progress(r.steps, run.step, r.progress_every)
    t_start, step_start = time.time(), run.step
    obs, state = run.env.reset(), None
    run.replay.add(obs, np.zeros(run.env.action_dim, np.float32))
    ep_ret, last_ckpt = 0.0, run.step
    signal.signal(signal.SIGTERM, _on_sigterm)
    pretrained = run.updates > 0
    try:
        if run.step == 0 and run.evals == 0:  # score of the untrained agent at step 0
            run.last_eval = run_eval(run, logdir)
            log.write({"step": 0, "eval_return": run.last_eval})
        while run.step < r.steps:
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
                if not pretrained:
                    for _ in range(r.pretrain):
                        run.train_once()
                        progress.update(run.step, run.updates, run.last_eval)
                    pretrained = True
                if run.agent_step // r.train_every > prev_agent // r.train_every:
                    run.train_once()
            evaluated = run.step >= run.next_eval or run.step >= r.steps  # always score the final agent
            if evaluated:
                run.last_eval = run_eval(run, logdir)
            if evaluated or run.step // r.log_every > prev // r.log_every or run.step >= r.steps:
                fps = (run.step - step_start) / max(time.time() - t_start, 1e-9)
                rec = {"step": run.step, "fps": fps, "updates": run.updates, "episodes": run.episodes,
                       "replay_steps": len(run.replay)}
                rec.update({k: float(np.mean(v)) for k, v in run.pending.items()})
                if evaluated:
                    rec["eval_return"] = run.last_eval
                run.pending.clear()
                log.write(rec)
            progress.update(run.step, run.updates, run.last_eval, force=evaluated)
            if run.step - last_ckpt >= r.checkpoint_every or run.step >= r.steps:
                run.save()
                last_ckpt = run.step
    except KeyboardInterrupt as e:
        run.save()
        progress.close()
        log.close()
        print(f"\ninterrupted: checkpoint saved at step {run.step}; rerun the same command to resume",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except FloatingPointError as e:
        run.save()
        progress.close()
        log.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    progress.close()
    log.close()
    summary = {"logdir": str(logdir), "step": run.step, "updates": run.updates, "episodes": run.episodes,
               "eval_return": run.last_eval, "seconds": round(time.time() - t_start, 1), "method": cfg.method,
               "precision": run.precision.mode}
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, notice = resolve(argv)
        preflight(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return train(cfg, notice)


if __name__ == "__main__":
    sys.exit(main())
