"""`run.compile`: the imagination step through torch.compile computes what the eager step computes.

The compiled step receives its noise from `imagine` (inductor would draw its own random numbers), so on the same
seed both give the same rollout up to float32 rounding, and the same gradients through the dynamics.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.common import build
from worldmodels.rssm import RSSM


def test_compiled_categorical_imagination_equals_eager():
    """Categorical latents (the Gaussian ones run through `test_run_compile_trains_like_eager`'s debug preset)."""
    torch.manual_seed(0)
    rssm = RSSM(action_dim=3, embed_dim=16, deter=32, stoch=8, discrete=32, hidden=32)
    policy = torch.nn.Linear(rssm.feat_dim, 3)
    start = rssm.initial(64)
    start["h"] = torch.randn(64, rssm.deter)
    used = [p for n, p in rssm.named_parameters() if not n.startswith("obs_out")] + list(policy.parameters())

    def rollout(compiled: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rssm.compile_imagination = compiled
        torch.manual_seed(1)
        seq = rssm.imagine(lambda f, _: torch.tanh(policy(f)), start, 5, detach_policy_input=False)
        return seq["feat"], list(torch.autograd.grad(seq["feat"].square().sum(), used))

    feat, grads = rollout(False)
    feat_c, grads_c = rollout(True)
    assert torch.allclose(feat_c, feat, atol=1e-5)
    assert torch.equal(feat_c[..., rssm.deter:], feat[..., rssm.deter:])  # the same categories were drawn
    for g, gc in zip(grads, grads_c, strict=True):
        assert torch.allclose(gc, g, rtol=1e-4, atol=1e-4 * g.abs().max().item())
    assert rollout(False)[0].equal(feat)  # switching back is eager again, on the same stream


def test_run_compile_trains_like_eager():
    """The recipe's whole update with `run.compile` (the flag reaches the RSSM and the actor-critic, whose losses
    then run as compiled graphs) equals the eager update."""
    from torch._dynamo.utils import counters

    eager, comp = build("tiny", "none"), build("tiny", "none", compile=True)
    assert comp.wm.rssm.compile_imagination and not eager.wm.rssm.compile_imagination
    assert comp.agent.compile_losses and not eager.agent.compile_losses
    torch.manual_seed(3)
    m_eager = eager.train_step()
    torch._dynamo.reset()  # an earlier test's compiled graphs would be reused, not counted
    counters.clear()
    torch.manual_seed(3)
    m_comp = comp.train_step()
    assert counters["stats"]["unique_graphs"] >= 1  # the losses were compiled, not run eagerly
    for k in ("agent/actor_loss", "agent/critic_loss", "agent/imag_return", "agent/critic_target"):
        assert math.isfinite(m_eager[k]) and m_comp[k] == pytest.approx(m_eager[k], rel=1e-4, abs=1e-6), k
    for p, q in zip(eager.agent.parameters(), comp.agent.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_a_schedule_changing_between_steps_does_not_recompile_the_losses():
    """The schedules' values (`actor_ent`, `actor_grad_mix`) enter the compiled losses as tensors, so a linear
    schedule moving at every step reuses the graph."""
    from torch._dynamo.utils import counters

    with build("tiny", "none", compile=True) as b:
        ag = b.agent
        ag.actor_ent, ag.actor_grad, ag.actor_grad_mix = "linear(1e-2,1e-4,100)", "both", "linear(0.9,0.1,100)"
        res = b.trainer.step(b.problem, b.batch)
        torch._dynamo.reset()  # an earlier test's compiled graphs would be reused, not counted
        counters.clear()
        seen = []
        for step in (0, 30, 60):
            m = ag.train_step(b.wm, res.outputs, b.batch["is_terminal"], step=step)
            seen.append((m["actor_ent_scale"], m["actor_grad_mix"]))
            assert math.isfinite(m["actor_loss"])
        assert len(set(seen)) == 3  # the schedules moved
        assert counters["stats"]["unique_graphs"] == 1  # compiled once, reused at the later steps


def test_compiled_losses_with_categorical_latents_equal_eager():
    """`run.compile` with categorical latents (the one-hot features' `OneHot` descriptions go through the compiled
    losses too): the same losses, statistics and agent parameters as eager, float32."""
    from benchmarks.common import BenchSize

    size = BenchSize("tiny_categorical", "debug", "finger_spin", {"world_model": {"stoch": 4, "discrete": 6}})
    eager, comp = build(size, "none"), build(size, "none", compile=True)
    assert comp.wm.rssm.discrete == 6 and comp.agent.compile_losses
    torch.manual_seed(4)
    m_eager = eager.train_step()
    torch.manual_seed(4)
    m_comp = comp.train_step()
    for k in ("agent/actor_loss", "agent/critic_loss", "agent/imag_return", "agent/critic_target", "agent/actor_ent"):
        assert math.isfinite(m_eager[k]) and m_comp[k] == pytest.approx(m_eager[k], rel=1e-4, abs=1e-6), k
    for p, q in zip(eager.agent.parameters(), comp.agent.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)
    eager.close(), comp.close()


def test_noise_drawn_beforehand_is_what_the_rollout_draws():
    """`ActorCritic.draw_noise` draws, in order, the numbers the eager rollout draws step by step (the action
    sample's uniforms, then the prior's noise): the actor-critic's losses from them equal the eager ones bit for
    bit, for Gaussian and categorical latents; another stream's numbers give other losses."""
    def losses(b, start: dict[str, torch.Tensor], seed: int, drawn: bool) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        noise = b.agent.draw_noise(b.wm, start) if drawn else None
        a, c, stats = b.agent.losses(b.wm, start, b.batch["is_terminal"], 1e-4, None, noise)
        return [a, c, *stats.values()]

    for size in ("tiny", "dmc_state"):
        with build(size, "none") as b:
            res = b.trainer.step(b.problem, b.batch)
            start = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in res.outputs.items()}
            b.agent.horizon = 3  # a short rollout keeps dmc_state's (categorical) case quick
            here, before, other = (losses(b, start, 5, False), losses(b, start, 5, True),
                                   losses(b, start, 6, True))
            assert all(torch.equal(x, y) for x, y in zip(here, before, strict=True)), size
            assert not torch.equal(here[0], other[0]), size
    from agents import ActorCritic

    with pytest.raises(ValueError, match="draw_noise needs continuous actions"):
        ActorCritic(8, 3, True, layers=1, units=8).draw_noise(None, {"h": torch.zeros(2, 4)})


def test_imagination_noise_is_what_the_eager_step_drew():
    """`imagine` draws each step's noise as `img_step` itself would: the same numbers from the same generator
    (float32, or float64 for a float64 model), so a rollout is unchanged by drawing it outside the step."""
    for dtype in (torch.float32, torch.float64):
        for discrete in (32, 0):
            rssm = RSSM(action_dim=2, embed_dim=4, deter=6, stoch=3, discrete=discrete, hidden=5).to(dtype)
            state = rssm.initial(7)
            action = torch.zeros(7, 2, dtype=dtype)
            torch.manual_seed(5)
            inside = rssm.img_step(state, action)
            torch.manual_seed(5)
            outside = rssm.img_step(state, action, rssm.noise(state["h"]))
            assert all(torch.equal(inside[k], outside[k]) for k in inside), (dtype, discrete)
