"""Fidelity gates of reduced precision (bfloat16, float16 with loss scaling) against float32.

bfloat16 is emulated on CPUs without AMX/AVX512-bf16 (slower than float32 there: `auto` picks float32), so these
run at small sizes, except the α-gradient gate, which runs at the `dmc_state` sizes.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents import ActorCritic
from bilevel import BilevelConfig, BilevelTrainer, stopgrad
from bilevel.precision import Precision, cpu_flags, native_bf16, resolve
from bilevel.problem import BilevelProblem
from bilevel.updater import loss_scaler
from losses import get_upper_loss
from worldmodels import WorldModel
from worldmodels.tempo_problem import TempoProblem

REDUCED = ["bf16", "16"]


def test_auto_picks_bf16_only_where_native():
    assert resolve("auto", "cpu") == ("bf16" if native_bf16("cpu") else "32")
    assert resolve("16", "cpu") == "16" and resolve("32", "cpu") == "32"
    flags = cpu_flags()
    assert set(flags) >= {"avx512_bf16", "amx_bf16"} and all(isinstance(v, bool) for v in flags.values())
    with pytest.raises(ValueError, match="unknown precision 'fp8'; accepted: \\['auto', '32', 'bf16', '16'\\]"):
        resolve("fp8", "cpu")


def test_float16_loss_scaling_is_dreamerv2s():
    """DreamerV2's float16 runs through Keras's dynamic LossScaleOptimizer: scale 2^15 at the start, halved on an
    overflow (that step skipped), doubled after 2000 finite steps. Only float16 gets a scaler."""
    scaler = loss_scaler(Precision("cpu", "16"))
    assert scaler.get_scale() == 2.0**15 and scaler.get_growth_interval() == 2000
    assert scaler.get_backoff_factor() == 0.5 and scaler.get_growth_factor() == 2.0
    assert loss_scaler(Precision("cpu", "bf16")) is None and loss_scaler(Precision("cpu", "32")) is None


def vec_batch(T: int, B: int, obs: int, act: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"state": torch.randn(T, B, obs, generator=g), "action": torch.rand(T, B, act, generator=g) * 2 - 1,
             "reward": torch.randn(T, B, generator=g), "is_first": torch.zeros(T, B, dtype=torch.bool),
             "is_terminal": torch.zeros(T, B, dtype=torch.bool)}
    batch["is_first"][0] = True
    return batch


@pytest.mark.parametrize("mode", REDUCED)
@pytest.mark.parametrize("discrete", [0, 8], ids=["gaussian", "categorical"])
def test_losses_on_a_fixed_batch_match_float32(mode, discrete):
    """World-model terms and actor-critic losses of one batch, same parameters and noise, within 3% (bf16) /
    0.5% (fp16) of float32; every loss and distribution parameter comes out in float32."""
    torch.manual_seed(0)
    wm = WorldModel({"state": (10,)}, 3, deter=64, stoch=8, discrete=discrete, hidden=64, units=128)
    agent = ActorCritic(wm.rssm.feat_dim, 3, False, units=128, horizon=8)
    batch = vec_batch(12, 8, 10, 3)
    out = {}
    for m in ("32", mode):
        prec, ac = Precision("cpu", m), copy.deepcopy(agent)
        torch.manual_seed(3)
        with prec.autocast():
            loss, terms, post, _, _ = wm.loss(batch)
            ac_metrics = ac.train_step(wm, {k: v.detach() for k, v in post.items()})
        assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
        assert post["h"].dtype == torch.float32 and post["s"].dtype == torch.float32
        out[m] = {"loss": float(loss), **{k: float(t.mean()) for k, t in terms.items()},
                  "actor_loss": ac_metrics["actor_loss"], "critic_loss": ac_metrics["critic_loss"]}
    tol = 3e-2 if mode == "bf16" else 5e-3
    rel = {k: abs(out[mode][k] - v) / max(abs(v), 1e-2) for k, v in out["32"].items()}
    assert max(rel.values()) < tol, rel


def state_size_problem(discrete: int, contraction: str, precision: str = "32", hypergrad: str = "32", **sizes):
    """TEMPO on a world model of the dmc_state sizes (deter 200, MLPs 4x400) unless `sizes` shrink it."""
    torch.manual_seed(0)
    wm = WorldModel({"state": (24,)}, 6, discrete=discrete, **sizes)
    critic = nn.Sequential(nn.Linear(wm.rssm.feat_dim, 400), nn.ELU(), nn.Linear(400, 1)).requires_grad_(False)
    problem = TempoProblem(wm, get_upper_loss("vvaml"), lambda f: critic(f).squeeze(-1))
    trainer = BilevelTrainer(wm, problem.input_dim, BilevelConfig(contraction=contraction,
                                                                  hypergrad_precision=hypergrad),
                             lower_opt=torch.optim.Adam(wm.parameters(), lr=3e-4),
                             precision=Precision("cpu", precision))
    return problem, trainer


def flat(g: dict) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in g.values()])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


@pytest.mark.parametrize(("mode", "hypergrad", "gaussian", "categorical"),
                         [("bf16", "32", 0.999, 0.999), ("16", "32", 0.999, 0.999), ("bf16", "step", 0.999, 0.995)])
def test_alpha_gradient_at_state_size_matches_the_float32_exact_one(mode, hypergrad, gaussian, categorical):
    """TEMPO's α-gradient (terms_fd, the recipe's) from a reduced-precision step against float32's exact
    contraction (terms_jvp), at the dmc_state sizes (16 x 50 batch): cosine ≥ 0.999, and with ∇θ L_up from the
    bf16 pass's own graph (`hypergrad_precision` 'step') ≥ 0.999 with Gaussian and ≥ 0.995 with categorical
    latents (issue 20's gates; measured on three seeds: README).

    Gaussian latents: same noise, so the two see the same samples. Categorical latents: the argmax of the
    Gumbel trick flips where bf16 rounding moves a logit across a near-tie, so the reference replays the
    reduced-precision pass's samples and stop-gradient values (a float32 exact α-gradient of the same draw)."""
    batch = vec_batch(50, 16, 24, 6)
    p, t = state_size_problem(0, "terms_fd", mode, hypergrad)  # the trainer's precision: its pass runs in it
    torch.manual_seed(7)
    got = flat(t.hypergradient(p, batch))
    pr, tr = state_size_problem(0, "terms_jvp")
    torch.manual_seed(7)
    with Precision("cpu", mode).autocast():  # ignored: a float32 trainer's pass is float32 whatever surrounds it
        want = flat(tr.hypergradient(pr, batch))
    assert cosine(got, want) >= gaussian, cosine(got, want)

    p, t = state_size_problem(32, "terms_fd", mode, hypergrad)
    torch.manual_seed(7)
    sc = t.forward(p, batch)
    assert sc.reduced and sc.lower_ctx.post["h"].dtype == torch.float32
    t.lower_grad(sc, meta=True)
    with torch.autocast("cpu", enabled=False):
        got = torch.cat([g.reshape(-1) for g in t.alpha_grad(sc)])
    pr, tr = state_size_problem(32, "double_backward")
    torch.manual_seed(7)
    with stopgrad.replay(sc.sg_tape):  # the same one-hot samples and stop-gradient values, in float32
        sc_ref = tr.forward(pr, batch, record_sg=False)
    tr.lower_grad(sc_ref, meta=True)
    want = torch.cat([g.reshape(-1) for g in tr.alpha_grad(sc_ref)])
    assert cosine(got, want) >= categorical, cosine(got, want)


class PassOfItsOwn(TempoProblem):
    """TEMPO as a problem that cannot read loss changes from an upper-context pass (the library's default)."""

    loss_deltas_from = BilevelProblem.loss_deltas_from


@pytest.mark.parametrize("discrete", [0, 8], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_terms_fd_reads_its_float32_passes_from_the_upper_pass_bit_for_bit(precision, discrete):
    """terms_fd's shifted pass is the problem's upper-context pass (so it can run beside the lower backward), and
    after a bf16 forward its float32 baseline at θ is the upper loss's own float32 pass: the α-gradient of
    `loss_deltas` re-running the world model, bit for bit, with one world-model pass fewer after bf16."""
    batch = vec_batch(12, 8, 24, 6)
    out = {}
    for cls in (TempoProblem, PassOfItsOwn):
        p, t = state_size_problem(discrete, "terms_fd", precision, deter=32, stoch=8, hidden=32, units=64)
        p.__class__ = cls
        calls: list[bool] = []
        p.call = lambda *a, calls=calls, call=p.call, **k: calls.append(k.get("heads", True)) or call(*a, **k)
        torch.manual_seed(7)
        out[cls] = flat(t.hypergradient(p, batch)), calls
    (got, calls), (want, own_calls) = out[TempoProblem], out[PassOfItsOwn]
    assert torch.equal(got, want) and got.abs().max() > 0
    # the forward pass (with the heads), the upper loss's float32 pass after bf16, the shifted pass, and, in the
    # library's default, a float32 baseline pass at θ after bf16
    reduced = precision == "bf16"
    assert calls == [True] + [False] * (1 + reduced) and own_calls == calls + [False] * reduced


def test_hypergrad_precision_step_takes_the_upper_gradient_from_the_bf16_pass():
    """'step': ∇θ L_up is the bf16 forward pass's own (no float32 upper pass), terms_fd's difference stays between
    float32 passes; '32' takes it from a float32 pass, a different (more exact) gradient."""
    batch = vec_batch(12, 8, 24, 6)
    grads = {}
    for hp in ("32", "step"):
        p, t = state_size_problem(0, "terms_fd", "bf16", hp, deter=32, stoch=8, hidden=32, units=64)
        torch.manual_seed(7)
        sc = t.forward(p, batch)
        assert sc.upper_own_pass == (hp == "32")
        own = torch.autograd.grad(p.upper_objective(batch, sc.lower_ctx), list(p.model.rssm.parameters()),
                                  retain_graph=True)
        t.lower_grad(sc, meta=True)
        names = [n for n, _ in p.model.named_parameters()]
        grads[hp] = torch.cat([g.reshape(-1) for n, g in zip(names, sc.upper_grad(), strict=True)
                               if n.startswith("rssm.")])
        if hp == "step":
            assert torch.equal(grads[hp], torch.cat([g.reshape(-1) for g in own])) and sc.cache.upper_ctx is None
    assert not torch.equal(grads["32"], grads["step"]) and cosine(grads["32"], grads["step"]) > 0.99
    with pytest.raises(ValueError, match="hypergrad_precision must be '32', got 'step'"):
        state_size_problem(0, "terms_fd", "16", "step", deter=32, stoch=8, hidden=32, units=64)


# ---- short runs: the same losses as float32 within seed noise, and no NaN ----------------------------------
UPDATES = 150


def train(precision: str, seed: int) -> dict[str, np.ndarray]:
    """UPDATES updates of the debug preset on a fixed replay of random cartpole episodes."""
    from recipes.config import build
    from recipes.run import Run

    torch.set_num_threads(1)
    fields = {"precision": precision, "world_model_precision": precision, "seed": seed}  # both parts at it
    cfg = build("debug", {"env": {"task": "cartpole_swingup"}, "run": fields})
    cfg.run.logdir = tempfile.mkdtemp()
    run = Run(cfg, Path(cfg.run.logdir))
    rng = np.random.default_rng(0)
    obs = run.env.reset()
    run.replay.add(obs, np.zeros(run.env.action_dim, np.float32))
    while len(run.replay) < 300:
        action = rng.uniform(-1, 1, run.env.action_dim).astype(np.float32)
        obs = run.env.step(action)
        run.replay.add(obs, action)
        if obs["is_last"]:
            obs = run.env.reset()
            run.replay.add(obs, np.zeros(run.env.action_dim, np.float32))
    for _ in range(UPDATES):
        run.train_once()
    return {k: np.array(v) for k, v in run.pending.items()}


@pytest.fixture(scope="module")
def histories() -> dict[str, dict[str, np.ndarray]]:
    return {f"{p}/{s}": train(p, s) for p, s in (("32", 0), ("32", 1), ("bf16", 0), ("16", 0))}


@pytest.mark.parametrize("mode", REDUCED)
def test_short_run_reaches_float32_losses_within_seed_noise(histories, mode):
    last = lambda h, k: float(h[k][-50:].mean())  # noqa: E731
    for key in ("wm/lower_loss_unweighted", "wm/upper_loss", "agent/critic_loss"):
        f0, f1, r = last(histories["32/0"], key), last(histories["32/1"], key), last(histories[f"{mode}/0"], key)
        assert abs(r - f0) <= 2 * abs(f1 - f0) + 0.02 * abs(f0), (key, f0, f1, r)


@pytest.mark.parametrize("mode", REDUCED)
def test_no_nonfinite_updates(histories, mode):
    """bf16 never skips; fp16 skips only while its loss scale comes down from 2^15 (then steady)."""
    h = histories[f"{mode}/0"]
    wm_skips, agent_skips = h["wm/nonfinite_steps"], h["agent/nonfinite_steps"]
    assert all(np.isfinite(v).all() for k, v in h.items() if not k.endswith("loss_scale")), "a NaN metric"
    if mode == "bf16":
        assert wm_skips[-1] == 0 and agent_skips[-1] == 0
    else:
        assert wm_skips[-1] <= 8 and wm_skips[-1] == wm_skips[20] and agent_skips[-1] == agent_skips[20]
        assert h["wm/loss_scale"][-1] >= 2.0**8
