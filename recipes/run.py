"""One training run's objects and state: environment, replay, world model, agent, TEMPO problem, trainer."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bilevel.trainer import set_learning_rate
from recipes import cpu
from recipes.config import Config

VIDEO_FRAMES = 200  # an evaluation video of a longer episode keeps every second frame


def bilevel_config(cfg: Config):
    """The weighting switch picks the strategy: none/naive need no weighter; meta uses tempo.bilevel."""
    b = cfg.tempo.bilevel
    if cfg.tempo.weighting == "meta":
        return b
    return b.model_copy(update={"strategy": cfg.tempo.weighting, "sign": "correct"})


class Run:
    """All state of one training run; `recipes.tempo.train` runs it, `checkpoint()`/`restore()` persist it."""

    def __init__(self, cfg: Config, logdir: Path) -> None:
        from agents import ActorCritic
        from bilevel import BilevelTrainer
        from bilevel.precision import Precision
        from bilevel.trainer import OPTIMIZER_FIELDS, make_optimizer
        from envs import Replay, make_env
        from losses import UpperLoss, get_upper_loss, upper_loss_class
        from worldmodels import WorldModel
        from worldmodels.tempo_problem import TempoProblem

        self.cfg, self.logdir = cfg, logdir
        self.device = torch.device(cfg.run.device)
        # The actor-critic's precision, and the world model's step's (float32 on a CPU unless asked otherwise)
        self.precision = Precision(self.device, cfg.run.precisions["agent"])
        self.wm_precision = Precision(self.device, cfg.run.precisions["world_model"])
        if cfg.run.threads is not None:
            torch.set_num_threads(cfg.run.threads)
        if self.device.type == "cpu":  # tiny values in second-order graphs hit slow denormal paths
            torch.set_flush_denormal(True)
            cpu.keep_freed_memory()  # each update reuses the pages of the last one's activations
        self.seed_everything(cfg.run.seed)
        e = cfg.env
        kw = dict(obs=e.obs, size=tuple(e.size), action_repeat=e.action_repeat, time_limit=e.time_limit,
                  scalar_keys=e.scalar_keys, distractors=e.distractors.model_dump())
        self.env = make_env(e.task, seed=cfg.run.seed, **kw)
        self.eval_env = make_env(e.task, seed=cfg.run.seed + 10_000, **kw)
        self.repeat = self.env.action_repeat  # frames per agent step: the env's default unless configured
        self.replay = Replay(logdir / "replay", seed=cfg.run.seed, **cfg.replay.model_dump())

        # Config sections flow into the constructors whole; the optimizer fields go to the optimizers.
        m = cfg.world_model
        self.wm = WorldModel(self.env.obs_space, self.env.action_dim, self.env.discrete,
                             **m.model_dump(exclude=OPTIMIZER_FIELDS), discount=cfg.agent.gamma).to(self.device)
        self.wm.rssm.compile_imagination = cfg.run.compile
        self.agent = ActorCritic(
            self.wm.rssm.feat_dim, self.env.action_dim, self.env.discrete,
            # DreamerV2 squashes replay rewards before the world model sees them (`to_torch`), not predictions
            **cfg.agent.model_dump(exclude={"reward_transform"}),
            use_discount_head=m.discount_head,
            precision=self.precision,  # float16: the agent's updater scales its losses
        ).to(self.device)
        self.agent.compile_losses = cfg.run.compile
        # Every UpperLoss normalises its values (the weighter's V inputs) with tempo.value_norm; a plain
        # user callable has no value normalisation to configure (TempoProblem wraps it as a FunctionLoss).
        cls = upper_loss_class(cfg.tempo.upper_loss)
        is_upper = isinstance(cls, type) and issubclass(cls, UpperLoss)
        self.upper = get_upper_loss(cfg.tempo.upper_loss, **({"norm": cfg.tempo.value_norm} if is_upper else {}))
        if isinstance(self.upper, torch.nn.Module):
            self.upper.to(self.device)
        self.problem = TempoProblem(self.wm, self.upper, lambda f: self.agent.value(f, slow=True),
                                    cfg.tempo.weighter_inputs)
        opt = make_optimizer(self.wm.parameters(), "adam", **m.model_dump(include={"lr", "eps", "weight_decay"}))
        self.trainer = BilevelTrainer(self.wm, self.problem.input_dim, bilevel_config(cfg), lower_opt=opt,
                                      lower_clip=m.clip, max_nonfinite=cfg.run.max_nonfinite,
                                      precision=self.wm_precision)
        self.step = 0  # env frames (agent steps × action repeat)
        self.updates = 0
        self.episodes = 0
        self.next_eval = 0
        self.evals = 0
        self.last_eval: float | None = None
        self.last_eval_step: int | None = None  # the frame of the last finished evaluation
        self.owed_updates = 0  # updates frames called for while a stop had cut the pretraining short
        self.pending: dict[str, list[float]] = {}
        self.nonfinite_agent = 0
        self.nonfinite_actions = 0

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def agent_step(self) -> int:
        """Environment steps taken by the agent (DreamerV2's `step` counter; schedules and `train_every`)."""
        return self.step // self.repeat

    def eval_due(self) -> bool:
        """An evaluation is due at this frame: the schedule's (step 0's included), or the final agent's. From the
        checkpointed counters alone, so a run stopped during an evaluation does it on resuming, the final one too."""
        final = self.step >= self.cfg.run.steps and self.last_eval_step != self.step
        return self.step >= self.next_eval or final

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
        is_first = torch.tensor([bool(obs["is_first"])], device=self.device)
        post = self.wm.filter(self.obs_tensor(obs), latent, prev_action, is_first)
        action = self.agent.policy(self.wm.feat(post), mode)  # [1, A]
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
        """One update on a batch sampled from the replay."""
        self.update(self.to_torch(self.replay.sample()))

    def update(self, batch: dict[str, torch.Tensor]) -> None:
        """One world-model update through the bilevel trainer, then one actor-critic update from its posterior
        states (`batch`: time-major [T, B, ...] tensors, as `to_torch` makes them). Metrics go to `pending`."""
        with self.wm_precision.autocast():  # reduced-precision matmuls, float32 islands inside the models
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
        """The mean return of `run.eval_episodes` policy-mode episodes, and the first one's video frames when one
        is due: every frame of an episode up to VIDEO_FRAMES long, every second frame of a longer one. Rendering
        costs more than acting, so a frame the video would drop is not rendered."""
        frames: list[np.ndarray] = []
        returns = []
        video = self.cfg.run.video_every and self.evals % self.cfg.run.video_every == 0
        for ep in range(self.cfg.run.eval_episodes):
            obs, state, ret, t = self.eval_env.reset(), None, 0.0, 0
            render = video and ep == 0
            while True:
                if render and (t < VIDEO_FRAMES or t % 2 == 0):
                    frames.append(self.frame(obs))
                action, state = self.act(obs, state, "eval")
                obs = self.eval_env.step(action)
                ret, t = ret + float(obs["reward"]), t + 1
                if obs["is_last"]:
                    break
            if render and t > VIDEO_FRAMES:  # past VIDEO_FRAMES only even steps were rendered: thin the start alike
                frames = frames[:VIDEO_FRAMES:2] + frames[VIDEO_FRAMES:]
            returns.append(ret)
        self.evals += 1
        self.last_eval_step = self.step
        return float(np.mean(returns)), frames

    def frame(self, obs: dict[str, Any]) -> np.ndarray:
        if "image" in obs:
            img = obs["image"]
            return np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
        render = getattr(self.eval_env, "render", None)
        return render() if render is not None else np.zeros((64, 64, 3), np.uint8)

    # -- persistence -------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Everything a resumed run needs, including the episode collected so far: the environment cannot be
        restored, so a resumed run stores that episode as one cut at the checkpoint (`restore`), and the frame
        counter keeps matching what the replay holds."""
        return {
            "world_model": self.wm.state_dict(), "agent": self.agent.checkpoint(),
            "trainer": self.trainer.state_dict(),
            "upper": self.upper.state_dict() if isinstance(self.upper, torch.nn.Module) else None,
            "counters": {"step": self.step, "updates": self.updates, "episodes": self.episodes,
                         "next_eval": self.next_eval, "evals": self.evals, "last_eval": self.last_eval,
                         "last_eval_step": self.last_eval_step, "owed_updates": self.owed_updates,
                         "nonfinite_agent": self.nonfinite_agent},
            "replay": {"last_file": self.replay.last_file(), "pending": self.replay.pending_episode()},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "replay": self.replay.rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def apply_learning_rates(self) -> None:
        """Set every optimizer's learning rate from the config (a resumed run may change them; the optimizer
        states it restored hold the old ones)."""
        m, a, w = self.cfg.world_model, self.cfg.agent, self.cfg.tempo.bilevel.weighter
        set_learning_rate(self.trainer.lower_opt, m.lr, m.weight_decay)
        self.trainer.lr = m.lr  # η of the hypergradient
        set_learning_rate(self.agent.actor_opt, a.actor_lr)
        set_learning_rate(self.agent.critic_opt, a.critic_lr)
        if self.trainer.meta_opt is not None:
            set_learning_rate(self.trainer.meta_opt, w.lr, w.weight_decay)

    def restore(self, state: dict[str, Any]) -> None:
        self.wm.load_state_dict(state["world_model"])
        self.agent.restore(state["agent"])
        self.trainer.load_state_dict(state["trainer"])
        if state["upper"] is not None and isinstance(self.upper, torch.nn.Module):
            self.upper.load_state_dict(state["upper"])
        c = state["counters"]
        self.step, self.updates, self.episodes = c["step"], c["updates"], c["episodes"]
        self.next_eval, self.evals, self.last_eval = c["next_eval"], c["evals"], c["last_eval"]
        # checkpoints from before this counter: their final evaluation counts as done (they never redid it)
        self.last_eval_step = c.get("last_eval_step", self.step)
        self.owed_updates = c.get("owed_updates", 0)
        self.nonfinite_agent = c["nonfinite_agent"]
        if state["replay"]["pending"] is not None:  # the episode in progress at the checkpoint, cut there
            self.replay.add_episode(state["replay"]["pending"])
        r = state["rng"]
        torch.set_rng_state(r["torch"])
        np.random.set_state(r["numpy"])
        random.setstate(r["python"])
        self.replay.set_rng_state(r["replay"])
        if r["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(r["cuda"])
