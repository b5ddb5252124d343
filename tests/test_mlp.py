"""`worldmodels.nets.MLP` is the one MLP builder: the actor, the critic and the world model's heads build
bit-identical parameters and outputs to a hand-built stack of the same layers created in the same order."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from agents import ActorCritic
from worldmodels import MLP, RSSM, WorldModel

SEED = 123


def hand_mlp(inp: int, out: int | None, layers: int, units: int, act: type[nn.Module] = nn.ELU,
             norm: bool = False) -> nn.Sequential:
    """Reference: Linear [+ LayerNorm(eps=1e-3), Linear without bias] + act per layer, then Linear(out)."""
    mods: list[nn.Module] = []
    dim = inp
    for _ in range(layers):
        mods.append(nn.Linear(dim, units, bias=not norm))
        if norm:
            mods.append(nn.LayerNorm(units, eps=1e-3))
        mods.append(act())
        dim = units
    if out is not None:
        mods.append(nn.Linear(dim, out))
    return nn.Sequential(*mods)


def keras_init(net: nn.Module) -> None:
    """Glorot-uniform weights and zero biases on every Linear, in module order."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def assert_same(got: list[Tensor], ref: list[Tensor]) -> None:
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        assert torch.equal(a, b), i


def fixed_input(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7))


def test_mlp_layers_match_a_hand_built_stack() -> None:
    for kw in (dict(out=3, layers=2, units=8), dict(out=None, layers=3, units=5),
               dict(out=2, layers=2, units=6, norm=True), dict(out=4, layers=0, units=9)):
        torch.manual_seed(SEED)
        mlp = MLP(5, kw["out"], kw["layers"], kw["units"], nn.ELU, kw.get("norm", False))
        torch.manual_seed(SEED)
        ref = hand_mlp(5, kw["out"], kw["layers"], kw["units"], nn.ELU, kw.get("norm", False))
        assert [type(m) for m in mlp] == [type(m) for m in ref]
        assert list(mlp.state_dict()) == list(ref.state_dict())
        assert_same(list(mlp.parameters()), list(ref.parameters()))
        x = fixed_input(4, 5)
        assert torch.equal(mlp(x), ref(x))
        assert mlp.out_dim == (kw["out"] if kw["out"] is not None else kw["units"] if kw["layers"] else 5)


def test_actor_and_critic_match_hand_built_reference() -> None:
    feat, act_dim, layers, units = 12, 3, 2, 16
    for discrete in (False, True):
        torch.manual_seed(SEED)
        agent = ActorCritic(feat, act_dim, discrete, layers=layers, units=units)
        torch.manual_seed(SEED)
        actor = hand_mlp(feat, act_dim if discrete else 2 * act_dim, layers, units)
        keras_init(actor)
        critic = hand_mlp(feat, 1, layers, units)
        keras_init(critic)
        ref = [*actor.parameters(), *critic.parameters(), *critic.parameters()]  # slow critic: a copy
        assert_same([p.detach() for p in agent.parameters()], [p.detach() for p in ref])
        x = fixed_input(5, feat)
        assert torch.equal(agent.actor.net(x), actor(x))
        assert torch.equal(agent.critic(x), critic(x).squeeze(-1))
        assert torch.equal(agent.value(x, slow=True), critic(x).squeeze(-1))
    # state_dict keys of the agent are those of a plain Sequential (checkpoints stay loadable)
    assert "critic.net.0.weight" in agent.state_dict() and agent.critic.net[0] is agent.critic.net.net[0]


def test_world_model_heads_match_hand_built_reference() -> None:
    obs, act, units, layers = 3, 2, 8, 2
    kw = dict(deter=8, stoch=4, hidden=8, units=units, layers=layers, discount_head=True)
    torch.manual_seed(SEED)
    wm = WorldModel({"state": (obs,)}, act, **kw)
    # Same construction order as WorldModel: encoder, RSSM, decoder, reward, discount; then Keras init of
    # the MLPs in that order (the RSSM initialises itself).
    torch.manual_seed(SEED)
    enc = hand_mlp(obs, None, layers, units)
    rssm = RSSM(act, units, 8, 4, 0, 8)
    feat = rssm.feat_dim
    dec = hand_mlp(feat, obs, layers, units)
    rew, disc = hand_mlp(feat, 1, layers, units), hand_mlp(feat, 1, layers, units)
    for m in (enc, dec, rew, disc):
        keras_init(m)
    ref = [*enc.parameters(), *rssm.parameters(), *dec.parameters(), *rew.parameters(), *disc.parameters()]
    assert_same([p.detach() for p in wm.parameters()], [p.detach() for p in ref])
    x = fixed_input(4, 2, feat)
    assert torch.equal(wm.reward(x), rew(x).squeeze(-1))
    assert torch.equal(wm.discount(x), torch.sigmoid(disc(x).squeeze(-1)))
    assert torch.equal(wm.decoder(x), dec(x))
    o = fixed_input(4, 2, obs)
    assert torch.equal(wm.encoder(o), enc(o))
    assert wm.encoder.out_dim == units


def test_old_world_model_checkpoint_keys_still_load() -> None:
    torch.manual_seed(SEED)
    wm = WorldModel({"state": (3,)}, 2, deter=8, stoch=4, hidden=8, units=8, layers=2, discount_head=True)
    heads = ("encoder.", "decoder.", "reward_head.", "discount_head.")
    # keys as written when the MLP wrapped its layers in a `net` Sequential
    old = {(k.split(".", 1)[0] + ".net." + k.split(".", 1)[1] if k.startswith(heads) else k): v.clone() + 1
           for k, v in wm.state_dict().items()}
    assert "reward_head.net.0.weight" in old
    wm.load_state_dict(old)  # strict
    assert torch.equal(wm.reward_head[0].weight, old["reward_head.net.0.weight"])
    assert wm.reward_head.net[0] is wm.reward_head[0]


def test_mlp_slice_is_a_plain_sequential() -> None:
    mlp = MLP(4, 2, 2, 8)
    head = mlp[:-1]
    assert type(head) is nn.Sequential and len(head) == len(mlp) - 1 and head[0] is mlp[0]



@pytest.mark.parametrize("norm", [False, True])
def test_in_place_elu_gives_nn_elus_values_and_derivatives_to_every_order_the_hypergradient_takes(norm):
    """The networks' ELU works in place (a faster backward, from its output): against the same MLP with the
    out-of-place `nn.ELU`, float64, with and without LayerNorm: equal outputs, and equal gradients by backward, by
    double backward (a Hessian-vector product, as exact hypergradients take it), by `torch.func.jvp` over
    `torch.func.grad`, and by `torch.func.vmap` over `grad` (per-sample gradients)."""
    from torch.func import functional_call, grad, jvp, vmap

    from worldmodels.nets import ELU

    torch.manual_seed(SEED)
    x = torch.randn(64, 9, dtype=torch.float64)
    torch.manual_seed(SEED)
    fast = MLP(9, 3, layers=2, units=16, norm=norm).double()
    torch.manual_seed(SEED)
    ref = MLP(9, 3, layers=2, units=16, act=nn.ELU, norm=norm).double()
    assert any(isinstance(m, ELU) and m.inplace for m in fast) and not any(isinstance(m, ELU) for m in ref)
    params = {k: p.detach() for k, p in ref.named_parameters()}
    v = {k: torch.randn_like(t) for k, t in params.items()}

    def loss(net: nn.Module, p: dict, xs: Tensor) -> Tensor:
        return (functional_call(net, p, (xs,)) ** 2).sum(-1).mean()

    def hvp(net: nn.Module) -> dict:
        ps = dict(net.named_parameters())
        g = torch.autograd.grad(loss(net, ps, x), list(ps.values()), create_graph=True)
        dot = sum((gi * v[k]).sum() for gi, k in zip(g, ps, strict=True))
        return dict(zip(ps, torch.autograd.grad(dot, list(ps.values())), strict=True))

    assert torch.equal(fast(x), ref(x))
    checks = {
        "grad": lambda net: grad(lambda p: loss(net, p, x))(params),
        "jvp(grad)": lambda net: jvp(grad(lambda p: loss(net, p, x)), (params,), (v,))[1],
        "vmap(grad)": lambda net: vmap(lambda xs: grad(lambda p: loss(net, p, xs))(params))(x.unsqueeze(1)),
        "double backward": hvp,
    }
    for name, fn in checks.items():
        a, b = fn(fast), fn(ref)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-12, msg=f"{name}: {k}")


def graph_nodes(t: Tensor) -> set[str]:
    """Names of every autograd node behind t."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo += [f for f, _ in fn.next_functions]
    return names


def test_an_mlp_on_a_sequence_copies_no_gradient_for_its_in_place_elu() -> None:
    """On a [T, B, F] input (the world model's heads, the critics on a whole imagined rollout) `F.linear` would
    return a view, and the in-place ELU on it would make autograd copy the layer's whole gradient
    (`CopySlices`, about a tenth of a `dmc_small` update); the MLP flattens the leading dims instead. Values and
    gradients are those of the MLP applied row by row, the one-hot path's too."""
    from worldmodels.onehot import OneHot

    torch.manual_seed(SEED)
    mlp = MLP(12, 3, layers=2, units=16)
    x = torch.randn(5, 4, 12, requires_grad=True)
    y = mlp(x)
    assert y.shape == (5, 4, 3) and "CopySlices" not in graph_nodes(y)
    rows = torch.stack([mlp(r) for r in x.reshape(-1, 12)]).reshape(5, 4, 3)
    torch.testing.assert_close(y, rows, rtol=0, atol=1e-6)
    g, = torch.autograd.grad((y ** 2).sum(), x)
    g_rows, = torch.autograd.grad((rows ** 2).sum(), x)
    torch.testing.assert_close(g, g_rows, rtol=1e-6, atol=1e-6)

    s = torch.nn.functional.one_hot(torch.randint(4, (5, 4, 2)), 4).flatten(-2).float()  # [5, 4, 8]: 2 groups of 4
    xh = torch.cat([torch.randn(5, 4, 4), s], -1)
    hot = mlp(xh, OneHot.of(s, start=4, classes=4))
    assert "CopySlices" not in graph_nodes(hot)
    torch.testing.assert_close(hot, mlp(xh), rtol=1e-6, atol=1e-6)
