"""Tests of agents/: lambda-returns by hand, the slow-target schedule, learning on a known 1-D latent
dynamics (continuous/dynamics and discrete/reinforce), gradient isolation, and checkpoint round trips."""

from __future__ import annotations

import copy
import io
import math
import re
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from agents import ActorCritic, LatentModel, TruncNormal, lambda_return
from bilevel.updater import Part

GOAL = 0.5
STEPS = torch.tensor([-1.0, 0.0, 1.0])  # discrete actions: left / stay / right


class PointModel(nn.Module):
    """Exact latent dynamics of a 1-D point: x' = x + 0.1 * a, reward r(x) = -(x - GOAL)^2, feat = [x].

    `dummy` (= 0) enters the dynamics and the reward heads the way world model parameters would, so any
    gradient the agent leaks into the model shows up as dummy.grad.
    """

    def __init__(self, discrete: bool, discount_head: bool = False):
        super().__init__()
        self.discrete, self.discount_head = discrete, discount_head
        self.dummy = nn.Parameter(torch.zeros(()))

    def step(self, x: Tensor, action: Tensor) -> Tensor:  # [N, 1], [N, A] -> [N, 1]
        move = action @ STEPS[:, None] if self.discrete else action
        return x + 0.1 * move * (1 + self.dummy)

    def imagine(self, policy: Callable[[Tensor], Tensor], start: dict[str, Tensor], horizon: int,
                detach_policy_input: bool = True, noise: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
        feats, actions = [self.feat(start)], []  # deterministic dynamics: no noise to draw or use
        for _ in range(horizon):
            actions.append(policy(feats[-1].detach(), None))
            feats.append(self.step(feats[-1], actions[-1]))
        return {"feat": torch.stack(feats), "action": torch.stack(actions)}

    def reward(self, feat: Tensor, onehot: None = None) -> Tensor:
        return -((feat[..., 0] - GOAL) ** 2) * (1 + self.dummy)

    def discount(self, feat: Tensor, onehot: None = None) -> Tensor | None:
        return torch.sigmoid(3 + self.dummy + 0 * feat[..., 0]) if self.discount_head else None

    def feat(self, state: dict[str, Tensor]) -> Tensor:
        return state["x"]

    def noise(self, like: Tensor) -> Tensor:
        return like.new_empty(like.shape[0], 0)  # the dynamics draw nothing



def make_start(T: int = 8, B: int = 16) -> dict[str, Tensor]:
    return {"x": torch.rand(T, B, 1) * 2 - 1}  # [T, B, 1] posterior "states" in [-1, 1]


def small_agent(discrete: bool, **kw) -> ActorCritic:
    cfg = dict(layers=2, units=64, actor_lr=1e-3, critic_lr=1e-3, slow_target_every=5, horizon=15)
    cfg.update(kw)
    return ActorCritic(1, 3 if discrete else 1, discrete, **cfg)


def rollout_return(agent: ActorCritic | None, model: PointModel, steps: int = 30) -> float:
    """Return of the eval-mode (distribution mode) policy in the true dynamics, 41 fixed starts in [-1, 1].

    agent=None plays the optimal policy (full speed towards the goal, greedy is optimal here)."""
    x = torch.linspace(-1, 1, 41)[:, None]
    total = torch.zeros(41)
    with torch.no_grad():
        for _ in range(steps):
            if agent is None:
                x = x + (GOAL - x).clamp(-0.1, 0.1)
            else:
                x = model.step(x, agent.policy(x, "eval"))
            total += model.reward(x)
    return total.mean().item()


def imagined_return(agent: ActorCritic | None, model: PointModel, start: dict[str, Tensor]) -> float:
    """Undiscounted imagined reward over the horizon (15) under the eval-mode policy (None: optimal)."""
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in start.items()}
    if agent is None:
        x, total = flat["x"], 0.0
        for _ in range(15):
            x = x + (GOAL - x).clamp(-0.1, 0.1)
            total += model.reward(x).mean().item()
        return total
    with torch.no_grad():
        seq = model.imagine(lambda f, _: agent.policy(f, "eval"), flat, agent.horizon)
        return model.reward(seq["feat"][1:]).sum(0).mean().item()


# ------------------------------------------------------------------------------------------------ lambda


def test_protocol_is_satisfied_by_toy_model():
    assert isinstance(PointModel(False), LatentModel)
    assert not isinstance(nn.Linear(1, 1), LatentModel)
    model: LatentModel = PointModel(False)
    assert model.feat({"x": torch.ones(2, 1)}).shape == (2, 1)


def test_lambda_return_by_hand():
    # H = 3, N = 1.  r = [1, 2, 3], d = [0.9, 0.8, 0.5], v = [v0, v1, v2, v3] = [0.5, 1.0, 1.5, 2.0]
    r = torch.tensor([[1.0], [2.0], [3.0]])
    d = torch.tensor([[0.9], [0.8], [0.5]])
    v = torch.tensor([[0.5], [1.0], [1.5], [2.0]])
    # lambda = 0.95, R_3 = v3 = 2:
    #   R_2 = 3 + 0.5 * (0.05 * 2.0 + 0.95 * 2.0)   = 3 + 0.5 * 2.0   = 4.0
    #   R_1 = 2 + 0.8 * (0.05 * 1.5 + 0.95 * 4.0)   = 2 + 0.8 * 3.875 = 5.1
    #   R_0 = 1 + 0.9 * (0.05 * 1.0 + 0.95 * 5.1)   = 1 + 0.9 * 4.895 = 5.4055
    expect = torch.tensor([[5.4055], [5.1], [4.0]])
    torch.testing.assert_close(lambda_return(r, v, d, 0.95), expect)
    # lambda = 0: one-step TD targets r_t + d_t v_{t+1} = [1 + 0.9*1.0, 2 + 0.8*1.5, 3 + 0.5*2.0]
    torch.testing.assert_close(lambda_return(r, v, d, 0.0), torch.tensor([[1.9], [3.2], [4.0]]))
    # lambda = 1: discounted Monte Carlo + bootstrap: R_2 = 3 + 0.5*2 = 4, R_1 = 2 + 0.8*4 = 5.2,
    #   R_0 = 1 + 0.9*5.2 = 5.68 (v0, v1, v2 unused)
    torch.testing.assert_close(lambda_return(r, v, d, 1.0), torch.tensor([[5.68], [5.2], [4.0]]))
    torch.testing.assert_close(lambda_return(r, v + torch.tensor([[9.0], [9.0], [9.0], [0.0]]), d, 1.0),
                               torch.tensor([[5.68], [5.2], [4.0]]))
    # [H, N] value + explicit bootstrap is the same thing; a float discount broadcasts.
    torch.testing.assert_close(lambda_return(r, v[:-1], d, 0.95, bootstrap=v[-1]), expect)
    torch.testing.assert_close(lambda_return(r, v, 0.5, 0.0), torch.tensor([[1.5], [2.75], [4.0]]))
    with pytest.raises(ValueError):
        lambda_return(r, v[:-1], d, 0.95)


def test_lambda_return_columns_independent_and_differentiable():
    r, d, v = torch.randn(5, 4), torch.rand(5, 4), torch.randn(6, 4, requires_grad=True)
    out = lambda_return(r, v, d, 0.95)
    for n in range(4):
        col = lambda_return(r[:, n:n + 1], v[:, n:n + 1], d[:, n:n + 1], 0.95)
        torch.testing.assert_close(out[:, n], col[:, 0])
    (g,) = torch.autograd.grad(out[0].sum(), v)
    assert g[0].abs().sum() == 0 and g[1:].abs().sum() > 0  # v_0 never enters its own target


# ------------------------------------------------------------------------------------------------ dists


def test_trunc_normal_matches_scipy_and_reparameterises():
    stats = pytest.importorskip("scipy.stats")
    mean = torch.tensor([[0.3, -0.9, 0.0]], dtype=torch.float64, requires_grad=True)
    std = torch.tensor([[0.5, 0.1, 2.0]], dtype=torch.float64)
    dist = TruncNormal(mean, std)
    x = torch.tensor([[0.1, -0.95, 0.7]], dtype=torch.float64)
    a, b = ((-1 - mean) / std).detach().numpy(), ((1 - mean) / std).detach().numpy()
    ref = stats.truncnorm(a, b, loc=mean.detach().numpy(), scale=std.numpy())
    assert dist.log_prob(x).item() == pytest.approx(ref.logpdf(x.numpy()).sum(), rel=1e-9)
    assert dist.entropy().item() == pytest.approx(ref.entropy().sum(), rel=1e-9)
    torch.manual_seed(0)
    many = TruncNormal(mean.expand(20000, 3), std.expand(20000, 3)).rsample()
    assert many.min() > -1 and many.max() < 1
    torch.testing.assert_close(many.mean(0), torch.as_tensor(ref.mean()[0]), atol=0.02, rtol=0)
    (g,) = torch.autograd.grad(many.sum(), mean)
    assert torch.all(g > 0)


@pytest.mark.parametrize("mean,std", [(0.0, 1.1), (0.5, 0.3), (-0.9, 0.1), (0.95, 0.6)])
def test_trunc_normal_gradients_exact_and_tensorflows(mean: float, std: float):
    """Both gradients of a sample against independent computations, in float64: 'exact' is the derivative of scipy's
    inverse CDF at the same uniform (central differences), and its mean over samples is the derivative of scipy's
    closed-form mean; 'tf' is TensorFlow's registered gradient of `stateless_parameterized_truncated_normal`
    (tensorflow/python/ops/random_grad.py: 1 for the mean, the standardised sample for the std), on the same
    values. Which one the actor learns with changes its updates: on average it differs, e.g. 1 against 0.25."""
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    u = torch.rand(4000, 1, dtype=torch.float64).clamp(0.01, 0.99)  # inside, away from the sampler's 1e-6 guard
    m = torch.full((4000, 1), mean, dtype=torch.float64, requires_grad=True)  # one parameter per sample: the
    s = torch.full((4000, 1), std, dtype=torch.float64, requires_grad=True)  # gradient of the sum is per sample

    def ppf(mu: float, sd: float) -> np.ndarray:  # scipy's sample at the same uniforms
        return stats.truncnorm.ppf(u.numpy(), (-1 - mu) / sd, (1 - mu) / sd, loc=mu, scale=sd)

    x = {g: TruncNormal(m, s, grad=g).rsample(u) for g in ("exact", "tf")}
    np.testing.assert_allclose(x["exact"].detach().numpy(), ppf(mean, std), rtol=0, atol=1e-9)
    assert torch.equal(x["exact"], x["tf"])  # the same sample either way
    h = 1e-6
    fd = {"mean": (ppf(mean + h, std) - ppf(mean - h, std)) / (2 * h),
          "std": (ppf(mean, std + h) - ppf(mean, std - h)) / (2 * h)}
    z = ((x["tf"] - m) / s).detach().numpy()
    expected = {"exact": fd, "tf": {"mean": np.ones_like(z), "std": z}}
    for g, want in expected.items():
        for name, param in (("mean", m), ("std", s)):
            (per_sample,) = torch.autograd.grad(x[g].sum(), param, retain_graph=True)
            np.testing.assert_allclose(per_sample.numpy(), want[name], rtol=1e-5, atol=1e-7)

    def closed_mean(mu: float, sd: float) -> float:
        return float(stats.truncnorm.mean((-1 - mu) / sd, (1 - mu) / sd, loc=mu, scale=sd))

    m1 = torch.tensor([mean], dtype=torch.float64, requires_grad=True)
    many = TruncNormal(m1.expand(200_000, 1), torch.full((200_000, 1), std, dtype=torch.float64)).rsample()
    (dm,) = torch.autograd.grad(many.mean(), m1)
    exact_dm = (closed_mean(mean + h, std) - closed_mean(mean - h, std)) / (2 * h)
    assert dm.item() == pytest.approx(exact_dm, abs=0.01) and exact_dm < 0.9  # not TF's 1 anywhere here


def test_trunc_normal_rejects_an_unknown_gradient():
    with pytest.raises(ValueError, match=r"unknown truncated-normal gradient 'implicit'; accepted: \['exact', 'tf'\]"):
        TruncNormal(torch.zeros(2), torch.ones(2), grad="implicit")


def test_policy_modes_and_shapes():
    cont, disc = small_agent(False), small_agent(True)
    feat = torch.zeros(7, 1)
    for mode in ("explore", "eval", "random"):
        a = cont.policy(feat, mode)
        assert a.shape == (7, 1) and a.abs().max() <= 1
        b = disc.policy(feat, mode)
        assert b.shape == (7, 3) and torch.all(b.sum(-1) == 1) and torch.all((b == 0) | (b == 1))
    assert torch.equal(cont.policy(feat, "eval"), cont.policy(feat, "eval"))
    noisy = small_agent(False, eval_noise=0.5), small_agent(True, eval_noise=1.0)
    a, b = noisy[0].policy(torch.zeros(500, 1), "eval"), noisy[1].policy(torch.zeros(500, 1), "eval")
    assert a.abs().max() <= 1 and a.std() > 0.1  # clipped Gaussian around the mode
    assert torch.all(b.sum(-1) == 1) and (b.sum(0) > 100).all()  # epsilon = 1: uniform one-hots
    with pytest.raises(ValueError):
        cont.policy(feat, "greedy")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ slow critic


def test_slow_critic_copies_on_schedule():
    torch.manual_seed(0)
    agent, model = small_agent(False, slow_target_every=3), PointModel(False)

    def equal() -> bool:
        pairs = zip(agent.critic.parameters(), agent.slow_critic.parameters(), strict=True)
        return all(torch.equal(a, b) for a, b in pairs)

    copied_at = []
    for k in range(1, 9):  # k-th train_step is update k-1: copies after updates 0, 3, 6 -> k = 1, 4, 7
        agent.train_step(model, make_start(2, 4))
        if equal():
            copied_at.append(k)
            snapshot = [p.clone() for p in agent.slow_critic.parameters()]
        else:  # between copies the slow critic holds the last copy exactly
            pairs = zip(agent.slow_critic.parameters(), snapshot, strict=True)
            assert all(torch.equal(a, b) for a, b in pairs)
    assert copied_at == [1, 4, 7]
    assert agent.updates == 8
    assert all(not p.requires_grad for p in agent.slow_critic.parameters())


# ------------------------------------------------------------------------------------------------ isolation


@pytest.mark.parametrize(("discrete", "grad", "head"), [(False, "dynamics", False), (True, "reinforce", True),
                                                        (True, "dynamics", False)])
def test_no_gradient_reaches_latent_model(discrete: bool, grad: str, head: bool):
    torch.manual_seed(0)
    agent = small_agent(discrete, actor_grad=grad, use_discount_head=head)
    model = PointModel(discrete, discount_head=head)
    before = [p.clone() for p in agent.actor.parameters()]
    start = make_start(2, 4)
    start["x"].requires_grad_(True)  # even a start that requires grad is cut off
    metrics = agent.train_step(model, start, is_terminal=torch.zeros(2, 4))
    assert model.dummy.grad is None and start["x"].grad is None
    assert all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))


def test_value_differentiable_wrt_feat_only():
    agent = small_agent(False)
    feat = torch.randn(4, 3, 1, requires_grad=True)
    for slow in (True, False):
        v = agent.value(feat, slow=slow)
        assert v.shape == (4, 3)
        (g,) = torch.autograd.grad(v.sum(), feat, retain_graph=True)
        assert g.abs().sum() > 0
        v.sum().backward()  # a plain backward (as the V-VAML loss does) writes no critic .grad
    assert all(p.grad is None for p in agent.critic.parameters())
    assert all(p.grad is None for p in agent.slow_critic.parameters())


def test_discount_head_and_terminal_first_step():
    agent = small_agent(True, use_discount_head=True, gamma=0.9)
    model = PointModel(True, discount_head=True)
    feat = torch.zeros(4, 6, 1)
    term = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # [T=2, B=3] -> N = 6
    disc = agent._discount(model, feat, term)
    torch.testing.assert_close(disc[0], 0.9 * (1 - term.reshape(-1)))
    # the head's mean is the discount itself (it learned DreamerV2's soft label gamma * (1 - terminal))
    torch.testing.assert_close(disc[1:], torch.full((3, 6), torch.sigmoid(torch.tensor(3.0)).item()))
    no_head = small_agent(True, gamma=0.9)._discount(model, feat, term)  # DreamerV2 ignores is_terminal then
    torch.testing.assert_close(no_head, torch.full((4, 6), 0.9))


def test_train_step_alignment():
    """REINFORCE scores action[i] under pi(feat[i]) for i < H-1; targets use r_0..r_{H-1} (reward at z_t)."""
    torch.manual_seed(0)
    agent, model = small_agent(True, gamma=0.9), PointModel(True)
    for p in agent.slow_critic.parameters():
        p.data.zero_()  # v == 0: the targets are plain lambda-discounted sums of the imagined rewards
    seen: dict[str, tuple[Tensor, ...] | dict[str, Tensor]] = {}
    imagine, forward = model.imagine, agent.actor.forward

    def spy_imagine(*args, **kwargs):
        seen["seq"] = imagine(*args, **kwargs)
        return seen["seq"]

    def spy_forward(feat: Tensor, onehot=None):
        dist = forward(feat, onehot)
        log_prob = dist.log_prob

        def spy_log_prob(action: Tensor) -> Tensor:
            seen["scored"] = (feat, action)
            return log_prob(action)

        dist.log_prob = spy_log_prob
        return dist

    model.imagine, agent.actor.forward = spy_imagine, spy_forward  # type: ignore[method-assign]
    metrics = agent.train_step(model, make_start(2, 4))
    seq = seen["seq"]
    assert isinstance(seq, dict)
    feat, action = seen["scored"]
    assert torch.equal(feat, seq["feat"][:-2]) and torch.equal(action, seq["action"][:-1])
    reward = model.reward(seq["feat"]).detach()  # [H+1, N]
    target = lambda_return(reward[:-1], torch.zeros_like(reward), 0.9, 0.95)
    assert metrics["critic_target"] == pytest.approx(target.mean().item(), rel=1e-5)
    weight = 0.9 ** torch.arange(16.0)[:, None]
    assert metrics["imag_return"] == pytest.approx((weight[1:] * reward[1:]).sum(0).mean().item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("discrete", [False, True], ids=["continuous-dynamics", "discrete-reinforce"])
def test_learns_on_point_dynamics(discrete: bool):
    torch.manual_seed(0)
    model = PointModel(discrete)
    agent = small_agent(discrete, actor_ent=1e-3 if discrete else 1e-4)
    assert agent.actor_grad == ("reinforce" if discrete else "dynamics")  # 'auto'
    probe = make_start(4, 16)
    imag0, eval0 = imagined_return(agent, model, probe), rollout_return(agent, model)
    imag_opt, eval_opt = imagined_return(None, model, probe), rollout_return(None, model)
    imag_stay = 15 * model.reward(probe["x"]).mean().item()  # never moving
    eval_stay = 30 * model.reward(torch.linspace(-1, 1, 41)[:, None]).mean().item()
    tic = time.perf_counter()
    metrics = [agent.train_step(model, make_start()) for _ in range(500)]
    elapsed = time.perf_counter() - tic
    imag1, eval1 = imagined_return(agent, model, probe), rollout_return(agent, model)
    first = sum(m["imag_return"] for m in metrics[:20]) / 20
    last = sum(m["imag_return"] for m in metrics[-20:]) / 20
    print(f"\n{'discrete' if discrete else 'continuous'}: 500 updates {elapsed:.1f}s | imagined 15 steps "
          f"(eval): {imag0:.2f} -> {imag1:.2f} (stay {imag_stay:.2f}, optimal {imag_opt:.2f}) | true rollout "
          f"30 steps (eval): {eval0:.2f} -> {eval1:.2f} (stay {eval_stay:.2f}, optimal {eval_opt:.2f}) | "
          f"train imag_return metric {first:.2f} -> {last:.2f}")
    assert imag1 > imag0 + 1.0 and eval1 > eval0 + 2.0 and last > first + 0.5
    # Close most of the gap between standing still and the optimal policy.
    assert (imag1 - imag_stay) / (imag_opt - imag_stay) > 0.85
    assert (eval1 - eval_stay) / (eval_opt - eval_stay) > 0.85


# ------------------------------------------------------------------------------------------------ checkpoint


@pytest.mark.parametrize("discrete", [False, True])
def test_checkpoint_restore_reproduces_next_update(discrete: bool):
    torch.manual_seed(0)
    model = PointModel(discrete)
    agent = small_agent(discrete, slow_target_every=2)
    for _ in range(3):  # counter = 3: a restored counter of 0 would copy the slow critic on the next step
        agent.train_step(model, make_start(2, 4))
    ckpt = agent.checkpoint()
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)

    start = make_start(2, 4)
    torch.manual_seed(123)
    m1 = agent.train_step(model, start)

    torch.manual_seed(99)  # different init everywhere
    other = small_agent(discrete, slow_target_every=2)
    other.restore(loaded)
    assert other.updates == 3
    torch.manual_seed(123)
    m2 = other.train_step(model, start)
    assert m1 == m2
    for (n, a), b in zip(agent.state_dict().items(), other.state_dict().values(), strict=True):
        if n != "_extra_state":
            assert torch.equal(a, b), n
    for opt_a, opt_b in ((agent.actor_opt, other.actor_opt), (agent.critic_opt, other.critic_opt)):
        for sa, sb in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The checkpoint was a copy: training after it did not change it.
    assert ckpt["_extra_state"]["updates"] == 3
    assert not torch.equal(ckpt["critic.net.0.weight"], agent.critic.net[0].weight)


def test_nonfinite_update_is_skipped_not_applied():
    torch.manual_seed(0)
    model = PointModel(discrete=False)
    agent = small_agent(False)
    before = [p.detach().clone() for p in agent.parameters()]
    start = {"x": torch.full((2, 3, 1), float("nan"))}
    m = agent.train_step(model, start)
    assert m["skipped_nonfinite"] == 1.0 and agent.updates == 0
    assert all(torch.equal(b, p) for b, p in zip(before, agent.parameters(), strict=True))
    assert agent.train_step(model, make_start())["skipped_nonfinite"] == 0.0


# ---- DreamerV2's schedules and actor_grad='both' -------------------------------------------------------
def test_schedules_match_dreamerv2_formulas():
    from agents import schedules

    assert schedules.value(3e-4, 10**6) == 3e-4 and schedules.value("1e-4", 0) == 1e-4
    assert schedules.value("linear(1e-3,1e-4,100)", 25) == pytest.approx(0.75 * 1e-3 + 0.25 * 1e-4)
    assert schedules.value("linear(1e-3,1e-4,100)", 500) == pytest.approx(1e-4)  # clipped after n steps
    assert schedules.value("warmup(10,0.5)", 4) == pytest.approx(0.2)
    assert schedules.value("exp(1,0.2,10)", 20) == pytest.approx(0.8 * 0.25 + 0.2)
    assert schedules.value("horizon(10,100,50)", 25) == pytest.approx(1 - 1 / 55)
    for bad in ("linear(1,2)", "cosine(1,2,3)", "fast"):
        with pytest.raises(ValueError, match=f"bad schedule '{re.escape(bad)}'; accepted: a number, 'linear"):
            schedules.parse(bad)
    with pytest.raises(ValueError, match="bad schedule 'fast'"):
        small_agent(False, actor_ent="fast")


def actor_step(agent: ActorCritic, model: PointModel, start: dict[str, Tensor], step: int) -> tuple[Tensor, dict]:
    """The actor's parameter change of one train_step with plain SGD(lr=1), no clipping, no decay: -∇ actor loss."""
    agent = copy.deepcopy(agent)
    agent.updater.parts["actor"] = Part(torch.optim.SGD(agent.actor.parameters(), lr=1.0), clip=1e12)
    before = torch.cat([p.detach().reshape(-1).clone() for p in agent.actor.parameters()])
    torch.manual_seed(3)
    metrics = agent.train_step(model, start, step=step)
    return before - torch.cat([p.detach().reshape(-1) for p in agent.actor.parameters()]), metrics


def test_actor_grad_both_mixes_dynamics_and_reinforce_on_schedule():
    """objective = mix·R_λ + (1 - mix)·log π(a)·A with mix = actor_grad_mix at the agent step: the gradient is
    linear in mix, equals 'dynamics' at mix = 1, and the schedule is read at the step passed in."""
    torch.manual_seed(0)
    model, start = PointModel(False), make_start()
    grads = {}
    for mix in (0.0, 1.0, 0.3):
        torch.manual_seed(1)
        agent = small_agent(False, actor_grad="both", actor_grad_mix=mix, actor_ent=0.0)
        grads[mix], m = actor_step(agent, model, start, 0)
        assert m["actor_grad_mix"] == mix
    torch.manual_seed(1)
    dyn, _ = actor_step(small_agent(False, actor_grad="dynamics", actor_ent=0.0), model, start, 0)
    assert float(grads[1.0].norm()) > 1e-6 and float((grads[0.0] - grads[1.0]).norm()) > 1e-3 * float(dyn.norm())
    torch.testing.assert_close(grads[1.0], dyn, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(grads[0.3], 0.3 * grads[1.0] + 0.7 * grads[0.0], rtol=1e-4, atol=1e-7)
    # schedules: linear(1, 0, 100) at agent step 30 is 0.7, for both the mix and the entropy scale
    torch.manual_seed(1)
    agent = small_agent(False, actor_grad="both", actor_grad_mix="linear(1,0,100)", actor_ent="linear(0,1e-2,100)")
    _, m = actor_step(agent, model, start, 30)
    assert m["actor_grad_mix"] == pytest.approx(0.7) and m["actor_ent_scale"] == pytest.approx(3e-3)


# ---- the lean imagination loop against the previous one ---------------------------------------------------
def previous_imagine(rssm, policy, start, horizon):
    """RSSM.imagine before the lean loop: stacked state keys and an action sampled at the last state too."""
    state = {k: start[k] for k in rssm.state_keys}
    states, feats, actions = [state], [rssm.feat(state)], []
    for _ in range(horizon):
        action = policy(feats[-1].detach())
        state = rssm.img_step(state, action)
        actions.append(action)
        states.append(state)
        feats.append(rssm.feat(state))
    actions.append(policy(feats[-1].detach()))
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    return {**stacked, "feat": torch.stack(feats), "action": torch.stack(actions)}


def previous_losses(agent: ActorCritic, wm, start, step: int = 0) -> tuple[Tensor, Tensor]:
    """The actor and critic losses as ActorCritic.train_step computed them before the lean loop (a second
    actor pass on feat[:-2] for the actor loss, actions [H+1])."""
    from agents import schedules

    start = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in start.items()}
    with torch.set_grad_enabled(agent.actor_grad in ("dynamics", "both")):
        seq = previous_imagine(wm.rssm, lambda f: agent.actor(f.detach()).rsample(), start, agent.horizon)
        feat = seq["feat"]
        reward = wm.reward(feat)
        disc = agent._discount(wm, feat, None)
        value = agent.value(feat, slow=True)
        target = lambda_return(reward[:-1], value, disc[:-1], agent.lambda_)
    weight = torch.cumprod(torch.cat([torch.ones_like(disc[:1]), disc[:-1]], 0), 0).detach()
    pi = agent.actor(feat[:-2].detach())
    if agent.actor_grad == "dynamics":
        objective = target[1:]
    else:
        objective = pi.log_prob(seq["action"][:-2].detach()) * (target[1:] - value[:-2]).detach()
    actor_loss = -(weight[:-2] * (objective + schedules.value(agent.actor_ent, step) * pi.entropy())).mean()
    v = agent.critic(feat[:-1].detach())
    critic_loss = -(torch.distributions.Normal(v, 1.0).log_prob(target.detach()) * weight[:-1]).mean()
    return actor_loss, critic_loss


@pytest.mark.parametrize("discrete,grad", [(0, "dynamics"), (4, "dynamics"), (4, "reinforce")],
                         ids=["gaussian-dynamics", "categorical-dynamics", "categorical-reinforce"])
def test_lean_imagination_computes_what_the_previous_loop_did(discrete, grad):
    """Same seed, same agent, a real RSSM: the losses and the gradients of one update equal those of the
    previous loop, up to float32 rounding (the actor's matmuls run per step instead of on the stacked batch)."""
    from worldmodels import WorldModel

    torch.manual_seed(0)
    wm = WorldModel({"state": (5,)}, 2, deter=16, stoch=4, discrete=discrete, hidden=16, units=32, layers=2)
    start = {k: v.detach() for k, v in wm.observe({"state": torch.randn(6, 3, 5), "action": torch.rand(6, 3, 2),
                                                    "is_first": torch.zeros(6, 3, dtype=torch.bool)})[0].items()}
    agent = ActorCritic(wm.rssm.feat_dim, 2, False, actor_grad=grad, layers=2, units=32, actor_ent=3e-3)
    ref = copy.deepcopy(agent)
    torch.manual_seed(5)
    a_loss, c_loss = previous_losses(ref, wm, start)
    ref_grads = [torch.autograd.grad(loss, list(m.parameters()))
                 for loss, m in ((a_loss, ref.actor), (c_loss, ref.critic))]
    for name, module in (("actor", agent.actor), ("critic", agent.critic)):  # parameter change = -gradient
        agent.updater.parts[name] = Part(torch.optim.SGD(module.parameters(), lr=1.0), clip=1e12)
    before = [[p.detach().clone() for p in m.parameters()] for m in (agent.actor, agent.critic)]
    torch.manual_seed(5)
    m = agent.train_step(wm, start)
    assert m["actor_loss"] == pytest.approx(float(a_loss), rel=1e-6)
    assert m["critic_loss"] == pytest.approx(float(c_loss), rel=1e-6)
    for b, module, g_ref in zip(before, (agent.actor, agent.critic), ref_grads, strict=True):
        for p0, p, g in zip(b, module.parameters(), g_ref, strict=True):
            torch.testing.assert_close(p0 - p.detach(), g, rtol=1e-4, atol=1e-7)
