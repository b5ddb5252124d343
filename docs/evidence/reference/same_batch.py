"""One DreamerV2 update's losses and gradients, ours against the reference's, with the same weights and noise.

Issue 19 §2 asks to look at "the reference's behaviour on the same batch". This script puts one of our runs'
weights into danijar/dreamerv2's own modules and runs, with TensorFlow, its `WorldModel.loss` on a batch and, from
that batch's posterior states, its `WorldModel.imagine`, `ActorCritic.target`, `actor_loss` and `critic_loss`; it
compares every intermediate quantity and the three losses' gradients with ours (`WorldModel.loss`,
`agents.ActorCritic.losses` under `agent.trunc_grad tf` and `exact`). The reference samples its own random numbers
(TFP's truncated normal or one-hot actions, the Gaussian posterior and prior); ours replays them: the action's
uniforms are recovered from the reference's samples by its truncated normal's CDF (one-hot actions are replayed as
they are), the standard normals as (stoch - mean) / std. Categorical latents' samples come from uniforms that both
sides replay (`replay_noise`). Three steps, the middle one in the reference's environment (`run_reference.sh setup`):

    python docs/evidence/reference/same_batch.py export RUN /tmp/sb/in.npz         # our side, whole
    /tmp/refenv/bin/python docs/evidence/reference/same_batch.py reference /tmp/sb/in.npz /tmp/sb/ref.npz
    python docs/evidence/reference/same_batch.py compare /tmp/sb/in.npz /tmp/sb/ref.npz [--json OUT]
    python docs/evidence/reference/same_batch.py summary OUT.json ...              # the README's tables

RUN is a `dmc_small` run directory with a checkpoint (its replay is read from a copy); `export-tiny` makes a fresh
tiny run and a synthetic batch instead, and `fixture` merges an export with both references' outputs into the test
fixture (`tests/test_reference_fixture.py`; TEMPO's step: `same_batch_tempo.py`). The export holds every parameter,
the batch, the noise and the config, so `compare` rebuilds our side from it alone. Every array crosses as float32 in
our layout (torch parameter names, [out, in] weights, feat = cat(h, s)); the reference's layouts (Keras kernels
[in, out], feat = cat(stoch, deter), the actor's separate mean and std layers) are mapped in `_tf_params` alone.
`compare` prints, per quantity, the largest absolute difference and the relative one (over the largest magnitude of
the reference's), and for the gradients their cosine and norm ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

WORK = Path(os.environ.get("WORK", "/tmp/ref"))  # run_reference.sh's patched copy of danijar/dreamerv2


# ---------------------------------------------------------------------------------------------- ours (torch)

STATS = {False: ("mean", "std"), True: ("logits",)}  # a latent state's distribution parameters (ours), per discrete
REF_STATS = {False: ("mean", "std"), True: ("logit",)}  # the same, the references' names
MODULES = {  # prefix -> our module, of a recipes.run.Run
    "encoder": lambda run: run.wm.encoder, "rssm": lambda run: run.wm.rssm, "decoder": lambda run: run.wm.decoder,
    "reward": lambda run: run.wm.reward_head, "discount": lambda run: run.wm.discount_head,
    "actor": lambda run: run.agent.actor.net,
    "critic": lambda run: run.agent.critic.net, "slow": lambda run: run.agent.slow_critic.net,
    "weighter": lambda run: run.trainer.weighter}


def named_params(run) -> Iterator[tuple[str, object]]:
    """('<prefix>/<our parameter name>', parameter) for every module of `MODULES` the run has."""
    for prefix, module in MODULES.items():
        if module(run) is not None:
            for name, p in module(run).named_parameters():
                yield f"{prefix}/{name}", p


def load_run(run_dir: Path, tmp: Path):  # -> recipes.run.Run, from its checkpoint
    """The run at its checkpoint, float32 on one thread, its replay a copy in `tmp`."""
    import shutil

    import torch

    from recipes.cli import resume_config
    from recipes.run import Run
    from recipes.rundir import RunDir

    rundir = RunDir(run_dir)
    cfg, _ = resume_config(rundir.saved_config(), {"run": {"precision": "32", "threads": 1}}, None)
    loaded = rundir.load_checkpoint()
    if loaded is None:
        raise SystemExit(f"error: {run_dir} holds no checkpoint")
    shutil.copytree(run_dir / "replay", tmp / "replay")
    run = Run(cfg, tmp)
    run.restore(loaded[0])
    torch.manual_seed(0)
    return run


def export(run, batch: dict, out: Path, seed: int, source: str) -> None:
    """Every parameter the update reads (world model, actor, critic, slow critic, and a TEMPO run's weighter), the
    batch, its posterior states (the start states of the imagination), the noise a TEMPO step replays, and the
    config: `compare` rebuilds our side from this file alone."""
    import torch

    from agents import schedules

    with torch.no_grad():
        post, _, _ = run.wm.observe(batch)
    agent, rssm = run.agent, run.wm.rssm
    arrays = {f"start/{k}": v.numpy() for k, v in post.items()}  # [T, B, ...]
    arrays |= {f"batch/{k}": v.numpy() for k, v in batch.items()}  # [T, B, ...]
    arrays |= {f"param/{key}": p.detach().numpy() for key, p in named_params(run)}
    # The prior's and the posterior's random numbers [T, B, S] (standard normals, or uniforms for categorical
    # latents), replayed by both sides in every pass of a TEMPO step (`same_batch_tempo.py`; V-VAML reads the prior's
    # sample); with categorical latents also DreamerV2's world-model pass and the imagination's priors [H, N, S] here
    # (Gaussian ones: ours replays the reference's own draws).
    rng = np.random.default_rng(seed)
    draw = rng.random if rssm.discrete else rng.standard_normal
    t, b = post["h"].shape[:2]
    for k in ("prior", "post"):
        arrays[f"noise/{k}"] = draw((t, b, rssm.stoch), np.float32)
    if rssm.discrete:
        arrays["noise/imag"] = draw((agent.horizon, t * b, rssm.stoch), np.float32)
    meta = {"source": source, "frames": run.step, "batch_seed": seed, "config": run.cfg.model_dump(mode="json"),
            "deter": rssm.deter, "stoch": rssm.stoch, "hidden": rssm.img_in[0].out_features,
            "action_dim": agent.action_dim, "horizon": agent.horizon, "gamma": agent.gamma,
            "lambda": agent.lambda_, "ent_scale": schedules.value(agent.actor_ent, run.agent_step),
            "min_std": agent.actor.min_std, "units": agent.actor.net[0].out_features,
            "layers": sum(isinstance(m, torch.nn.Linear) for m in agent.actor.net) - 1,
            "obs_key": run.wm.obs_key, "weighter_layers": sum(k.endswith("weight") and v.ndim == 2
                                                              for k, v in arrays.items() if "weighter" in k),
            "embed": run.wm.encoder.out_dim, "discrete": rssm.discrete, "kl_free": run.wm.kl_free,
            "kl_balance": run.wm.kl_balance, "kl_scale": run.wm.kl_scale,
            "discount_scale": run.wm.loss_scales["discount"], "discount_head": run.wm.discount_head is not None,
            "discrete_actions": agent.discrete, "actor_grad": agent.actor_grad, "preset": run.cfg.preset}
    if run.wm.obs_key == "image":  # the conv stacks' depth and kernel sizes
        convs = lambda m: [x for x in m.net if isinstance(x, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]  # noqa: E731
        meta |= {"depth": convs(run.wm.encoder)[0].out_channels,
                 "enc_kernels": [c.kernel_size[0] for c in convs(run.wm.encoder)],
                 "dec_kernels": [c.kernel_size[0] for c in convs(run.wm.decoder)]}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, meta=json.dumps(meta), **arrays)
    print(f"exported {len(arrays)} arrays from {source} at {meta['frames']} frames to {out}")


def export_run(run_dir: Path, out: Path, batch_seed: int) -> None:
    """A run's checkpoint and one batch of its replay (the chunks drawn with `batch_seed`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run = load_run(run_dir, Path(tmp))
        run.replay.set_rng_state(np.random.default_rng(batch_seed).bit_generator.state)  # which chunks
        export(run, run.to_torch(run.replay.sample()), out, batch_seed, str(run_dir.resolve()))


TINY = {  # `export-tiny`: a `tempo-official` run at a few units per layer, for the test fixture
    "env": {"task": "cartpole_swingup"},
    "world_model": {"deter": 16, "stoch": 32, "hidden": 16, "units": 16, "layers": 2},  # KL above the free nats
    "agent": {"units": 16, "layers": 2, "horizon": 5},
    "replay": {"batch": 4, "length": 8},
    "tempo": {"weighting": "meta", "bilevel": {"sign": "official", "contraction": "terms_fd",
                                               "weighter": {"layers": 3, "units": 16}}},
    "run": {"precision": "32", "threads": 1},
}


def export_tiny(out: Path, seed: int, pixels: bool = False, discrete: int = 0, atari: bool = False) -> None:
    """A freshly initialised `TINY` run (seed `seed`) and a synthetic batch: Gaussian states (or uniform pixels at
    `dmc_pixels` with a conv depth of 2), uniform actions and rewards, a chunk start at t = 0; with `discrete` K,
    `dmc_state`'s categorical latents (32 variables of K classes); with `atari`, the `atari` preset on Pong at those
    sizes (64 x 64 grey pixels, 16 x 8 categorical latents, one-hot actions, the discount head and REINFORCE), with
    some terminal steps. What `tests/test_reference_fixture.py` checks ours against, in CI."""
    import tempfile

    import torch

    from recipes.config import build
    from recipes.run import Run

    cfg = {**TINY, "run": {**TINY["run"], "seed": seed}}
    # Pixels and categorical latents start with a KL under the free nats (0.3 here), where neither side's prior
    # would get a gradient: free nats of 0.1 keep the KL balance in the comparison.
    if pixels:
        cfg |= {"world_model": {**TINY["world_model"], "depth": 2, "kl_free": 0.1}, "replay": {"batch": 2, "length": 4}}
    if discrete:
        cfg |= {"world_model": {**TINY["world_model"], "stoch": 32, "discrete": discrete, "kl_free": 0.1},
                "replay": {"batch": 2, "length": 4}}
    if atari:
        cfg |= {"env": {"task": "atari:pong"}, "world_model": {**TINY["world_model"], "depth": 2, "stoch": 16,
                                                               "discrete": 8}, "replay": {"batch": 2, "length": 4}}
    preset = "atari" if atari else "dmc_pixels" if pixels else "dmc_state" if discrete else "dmc_small"
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(build(preset, cfg), Path(tmp))
        g = torch.Generator().manual_seed(seed)
        t, b = cfg["replay"]["length"], cfg["replay"]["batch"]
        shape, a = run.wm.obs_shape, run.env.action_dim
        obs = (torch.randint(0, 256, (t, b, *shape), generator=g, dtype=torch.uint8) if pixels or atari else
               torch.randn(t, b, *shape, generator=g))
        action = (torch.nn.functional.one_hot(torch.randint(0, a, (t, b), generator=g), a).float() if atari else
                  torch.rand(t, b, a, generator=g) * 2 - 1)
        batch = {run.wm.obs_key: obs, "action": action,
                 "reward": torch.rand(t, b, generator=g), "is_first": torch.arange(t)[:, None].expand(t, b) == 0,
                 "is_terminal": (torch.rand(t, b, generator=g) < 0.25) if atari else torch.zeros(t, b, dtype=bool)}
        export(run, batch, out, seed, f"export-tiny ({preset})")


def make_run(inp: dict, meta: dict, tmp: Path, overrides: dict | None = None):  # -> recipes.run.Run
    """Our side of a comparison from an exported file alone: the run's config (float32, one thread, `overrides` on
    top), its parameters copied in; nothing trains."""
    import torch

    from recipes.config import Config, deep_update
    from recipes.run import Run

    data = deep_update(meta["config"], {"run": {"precision": "32", "threads": 1}, **(overrides or {})})
    run = Run(Config.model_validate(data), tmp)
    with torch.no_grad():
        for key, p in named_params(run):
            p.copy_(torch.from_numpy(inp[f"param/{key}"]))
    return run


def ours(run, inp: dict, ref: dict, meta: dict, trunc_grad: str) -> dict[str, np.ndarray]:
    """Our actor-critic losses, intermediates and gradients with the reference's random numbers."""
    import torch
    from scipy.special import ndtr

    from agents.actor_critic import frozen

    agent, wm = run.agent, run.wm
    agent.actor.trunc_grad = trunc_grad
    start = {k.split("/", 1)[1]: torch.from_numpy(v) for k, v in inp.items() if k.startswith("start/")}
    start = {k: v.reshape(-1, *v.shape[2:]) for k, v in start.items()}  # [N, ...]
    prior = [torch.from_numpy(e) for e in ref["prior_eps"]]  # [H] x [N, stoch]
    real_dist = agent.actor.dist
    if agent.discrete:  # the reference's one-hot samples, with the straight-through gradient of both
        actions = iter(torch.from_numpy(ref["action"]))
        uniforms = [None] * agent.horizon

        def replaying_dist(out):
            d = real_dist(out)
            d.rsample = lambda *_a, **_k: next(actions) + d.probs - d.probs.detach()
            return d

        agent.actor.dist = replaying_dist
    else:  # the reference's samples as our noise: x = mean + std * ndtri(Phi(a) + u (Phi(b) - Phi(a))) solved for u
        mean, std, x = (ref[k].astype(np.float64) for k in ("actor_mean", "actor_std", "action"))  # [H, N, A]
        lo, hi = ndtr((-1 - mean) / std), ndtr((1 - mean) / std)
        u = (ndtr((x - mean) / std) - lo) / (hi - lo)
        uniforms = [torch.from_numpy(u[i].astype(np.float32)) for i in range(u.shape[0])]
    raw: list[torch.Tensor] = []
    hook = agent.actor.net.register_forward_hook(lambda _m, _i, o: raw.append(o))
    feats: list[torch.Tensor] = []
    orig_imagine = wm.imagine

    def imagine(*args, **kwargs):  # keep the rollout for the comparison
        seq = orig_imagine(*args, **kwargs)
        feats.append(seq["feat"])
        return seq

    wm.imagine = imagine
    try:
        with frozen(wm):
            actor_loss, critic_loss, stats = agent.losses(wm, start, None, meta["ent_scale"], None,
                                                          (uniforms, prior))
    finally:
        hook.remove()
        wm.imagine = orig_imagine
        if agent.discrete:
            del agent.actor.dist
    a_params = dict(agent.actor.net.named_parameters())
    c_params = dict(agent.critic.net.named_parameters())
    ga = torch.autograd.grad(actor_loss, list(a_params.values()), retain_graph=True)
    gc = torch.autograd.grad(critic_loss, list(c_params.values()))
    feat = feats[0].detach()  # [H+1, N, F]
    with torch.no_grad():
        reward = wm.reward(feat)
        value = agent.value(feat, slow=True)
        out = torch.stack(raw[:agent.horizon])  # [H, N, 2A] (one-hot actions: [H, N, A]); then the loss's pass
        dist = agent.actor.dist(out)
    params = {"actor_logits": dist.logits} if agent.discrete else {"actor_mean": dist.mean, "actor_std": dist.std}
    res = {"feat": feat, "reward": reward, "value": value, **params,
           "actor_loss": actor_loss.detach(), "critic_loss": critic_loss.detach(),
           "actor_ent": stats["actor_ent"], "critic_target": stats["critic_target"],
           "critic_value": stats["critic_value"]}
    res = {k: v.numpy() for k, v in res.items()}
    res.update({f"grad/actor/{n}": g.numpy() for n, g in zip(a_params, ga, strict=True)})
    res.update({f"grad/critic/{n}": g.numpy() for n, g in zip(c_params, gc, strict=True)})
    return res


@contextlib.contextmanager
def replaying(rssm, prior, post) -> Iterator[None]:
    """Within the block every `observe` of our RSSM samples its prior at step t from `prior[t]` (None: its own
    draws) and its posterior from `post[t]` ([T, B, S] tensors: standard normals, or uniforms for categorical
    latents), the order `_obs_step` samples them in."""
    calls = {"i": 0}
    observe, sample = rssm.observe, rssm._sample

    def replaying_observe(*args, **kwargs):
        calls["i"] = 0
        return observe(*args, **kwargs)

    def replaying_sample(stats, noise=None):
        i, calls["i"] = calls["i"], calls["i"] + 1
        given = prior if i % 2 == 0 else post
        return sample(stats, noise if given is None else given[i // 2])

    rssm.observe, rssm._sample = replaying_observe, replaying_sample
    try:
        yield
    finally:
        del rssm.observe, rssm._sample


def ours_world_model(run, inp: dict, ref: dict, meta: dict) -> dict[str, np.ndarray]:
    """Our world-model loss, its terms and its gradients on the batch, with the reference's posterior noise."""
    import torch

    wm, rssm = run.wm, run.wm.rssm
    batch = {k.split("/", 1)[1]: torch.from_numpy(v) for k, v in inp.items() if k.startswith("batch/")}
    eps = torch.from_numpy(ref["wm/post_eps"]).transpose(0, 1)  # [B, T, S] -> [T, B, S]
    with replaying(rssm, None, eps):  # the prior's sample does not enter DreamerV2's loss
        loss, terms, post, prior, _ = wm.loss(batch)
    params = {f"{prefix}/{n}": p for prefix in ("encoder", "rssm", "decoder", "reward", "discount")
              if MODULES[prefix](run) is not None for n, p in MODULES[prefix](run).named_parameters()}
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    res = {"wm/loss": loss, "wm/nll_obs": terms[meta["obs_key"]].mean(), "wm/nll_reward": terms["reward"].mean(),
           "wm/kl_value": terms["kl"].mean(),
           **({"wm/nll_discount": terms["discount"].mean()} if "discount" in terms else {}),
           **{f"wm/post_{k}": post[k] for k in STATS[bool(meta["discrete"])]},
           **{f"wm/prior_{k}": prior[k] for k in STATS[bool(meta["discrete"])]}}
    res = {k: v.detach().numpy() for k, v in res.items()}
    res |= {f"grad/{k}": (np.zeros(p.shape, np.float32) if g is None else g.numpy())
            for (k, p), g in zip(params.items(), grads, strict=True)}
    return res


def _family(key: str) -> str:
    """A gradient's family, e.g. 'grad/actor' (DreamerV2's update) or 'grad_alpha' (TEMPO's step)."""
    parts = key.split("/")
    return "/".join(parts[:2]) if parts[0] == "grad" else parts[0]


def compare_rows(ref: dict, mine: dict, label: str) -> list[dict]:
    """Per quantity of `mine`: the largest absolute difference to `ref`'s, relative to `ref`'s largest magnitude;
    for a gradient also the cosine and the norm ratio (ours / the reference's); for a scalar both values. Arrays
    whose key starts with 'wm/p' are the reference's [B, T, ...] (batch-major) and are swapped to ours, [T, B]."""
    rows = []
    family_max: dict[str, float] = {}  # the largest entry of each gradient (its keys' first part) in the reference
    for key in (k for k in mine if k.startswith("grad")):
        family_max[_family(key)] = max(family_max.get(_family(key), 0.0), float(np.abs(ref[key]).max()))
    for key in sorted(mine):
        r, m = ref[key].astype(np.float64), mine[key].astype(np.float64)
        if key.startswith("wm/p"):
            r = np.swapaxes(r, 0, 1)
        diff, scale = float(np.abs(r - m).max()), float(np.abs(r).max())
        row = {"label": label, "quantity": key, "max_abs_diff": diff,
               "rel": diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))}
        if r.ndim == 0:
            row |= {"reference": float(r), "ours": float(m)}
        if key.startswith("grad") and not (r.any() or m.any()):  # e.g. the prior's, with the KL under free nats
            row |= {"cos": 1.0, "norm_ratio": 1.0, "both_zero": True}
        elif key.startswith("grad") and max(np.abs(r).max(), np.abs(m).max()) <= 1e-6 * family_max[_family(key)]:
            # zero but for rounding in both, e.g. a bias in front of a training-mode BatchNorm (the weighter's),
            # which subtracts the batch mean: a cosine of rounding errors says nothing
            row |= {"negligible": True}
        elif key.startswith("grad"):
            row["cos"] = float((r * m).sum() / (np.linalg.norm(r) * np.linalg.norm(m) + 1e-30))
            row["norm_ratio"] = float(np.linalg.norm(m) / (np.linalg.norm(r) + 1e-30))
        rows.append(row)
    return rows


def print_rows(rows: list[dict]) -> None:
    for row in rows:
        extra = ("  both exactly zero" if row.get("both_zero") else
                 "  both zero to rounding (<= 1e-6 of the gradient's largest entry)" if row.get("negligible") else
                 f"  cos {row['cos']:.6f}  norm ours/ref {row['norm_ratio']:.4f}" if "cos" in row else
                 f"  reference {row['reference']:.7g}, ours {row['ours']:.7g}" if "ours" in row else "")
        print(f"{row['label']:30s} {row['quantity']:32s} max|diff| {row['max_abs_diff']:.3e}  "
              f"rel {row['rel']:.2e}{extra}")


def compare_update(inp: dict, ref: dict) -> list[dict]:
    """`compare_rows` of our DreamerV2 update against the reference's (`reference`'s output `ref`)."""
    import tempfile

    meta = json.loads(str(inp["meta"]))
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(inp, meta, Path(tmp))
        rows = compare_rows(ref, ours(run, inp, ref, meta, "tf"), "actor-critic, trunc_grad tf")
        rows += compare_rows(ref, ours(run, inp, ref, meta, "exact"), "actor-critic, trunc_grad exact")
        return rows + compare_rows(ref, ours_world_model(run, inp, ref, meta), "world model")


def compare(inp_path: Path, ref_path: Path, json_out: Path | None) -> None:
    inp, ref = dict(np.load(inp_path)), dict(np.load(ref_path))
    report(compare_update(inp, ref), inp, json_out)


def report(rows: list[dict], inp: dict, json_out: Path | None) -> None:
    """Print the rows; with `json_out`, write them and the export's meta (its config left in the export)."""
    print_rows(rows)
    if json_out is not None:
        meta = {k: v for k, v in json.loads(str(inp["meta"])).items() if k != "config"}
        json_out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


# ------------------------------------------------------------------------------------- the reference (TF)

def _tf_params(wm, ac, meta: dict) -> list[tuple[str, object, slice, np.ndarray | None]]:
    """(our parameter name, the reference's variable, our output rows it holds, our input columns in its order or
    None) for every parameter the update reads. Keras kernels are [in, out], ours [out, in]."""
    deter, stoch = meta["deter"], meta["stoch"] * (meta["discrete"] or 1)  # stoch: the flattened sample's size
    feat_cols = np.r_[deter:deter + stoch, 0:deter]  # the reference's feat = cat(stoch, deter); ours cat(h, s)
    obs_cols = None
    if meta["obs_key"] == "image":  # the conv embedding flattened: Keras' [h, w, c], ours [c, h, w]
        c, hw = meta["embed"] // 4, 4  # 2 x 2 pixels after the four stride-2 convs of a 64 x 64 image
        h, w, ch = np.unravel_index(np.arange(meta["embed"]), (2, 2, c))
        obs_cols = np.r_[0:deter, deter + ch * hw + h * 2 + w]
    every = slice(None)
    rssm = wm.rssm
    out = [("rssm/img_in.0.weight", rssm._modules["img_in"].kernel, every, None),
           ("rssm/img_in.0.bias", rssm._modules["img_in"].bias, every, None),
           ("rssm/cell.layer.weight", rssm._cell._layer.kernel, every, None),
           ("rssm/cell.layer.bias", rssm._cell._layer.bias, every, None),
           ("rssm/cell.norm.weight", rssm._cell._norm.gamma, every, None),
           ("rssm/cell.norm.bias", rssm._cell._norm.beta, every, None),
           ("rssm/img_out.0.weight", rssm._modules["img_out_0"].kernel, every, None),
           ("rssm/img_out.0.bias", rssm._modules["img_out_0"].bias, every, None),
           ("rssm/img_out.2.weight", rssm._modules["img_dist_0"].kernel, every, None),
           ("rssm/img_out.2.bias", rssm._modules["img_dist_0"].bias, every, None),
           ("rssm/obs_out.0.weight", rssm._modules["obs_out"].kernel, every, obs_cols),  # on cat(deter, embed)
           ("rssm/obs_out.0.bias", rssm._modules["obs_out"].bias, every, None),
           ("rssm/obs_out.2.weight", rssm._modules["obs_dist"].kernel, every, None),
           ("rssm/obs_out.2.bias", rssm._modules["obs_dist"].bias, every, None)]
    encoder, decoder = wm.encoder, wm.heads["decoder"]
    if meta["obs_key"] == "image":  # conv kernels: ours [out, in, k, k] (transposed: [in, out, k, k]), Keras [k, k, .]
        for i in range(len(meta["enc_kernels"])):
            conv = encoder._modules[f"conv{i}"]
            out += [(f"encoder/net.{2 * i}.weight", conv.kernel, every, "conv"),
                    (f"encoder/net.{2 * i}.bias", conv.bias, every, None)]
        out += [("decoder/inp.weight", decoder._modules["convin"].kernel, every, feat_cols),
                ("decoder/inp.bias", decoder._modules["convin"].bias, every, None)]
        for i in range(len(meta["dec_kernels"])):
            conv = decoder._modules[f"conv{i}"]
            out += [(f"decoder/net.{2 * i}.weight", conv.kernel, every, "conv"),
                    (f"decoder/net.{2 * i}.bias", conv.bias, every, None)]
        return out + _head_params(wm, ac, meta, feat_cols)
    for i in range(meta["layers"]):
        for prefix, dense in (("encoder", encoder._modules[f"dense{i}"]), ("decoder", decoder._modules[f"dense{i}"])):
            cols = feat_cols if prefix == "decoder" and i == 0 else None
            out += [(f"{prefix}/{2 * i}.weight", dense.kernel, every, cols),
                    (f"{prefix}/{2 * i}.bias", dense.bias, every, None)]
    last = decoder._modules[f"dense_{meta['obs_key']}"]._modules["out"]
    out += [(f"decoder/{2 * meta['layers']}.weight", last.kernel, every, None),
            (f"decoder/{2 * meta['layers']}.bias", last.bias, every, None)]
    return out + _head_params(wm, ac, meta, feat_cols)


def _head_params(wm, ac, meta: dict, feat_cols: np.ndarray) -> list[tuple[str, object, slice, np.ndarray | None]]:
    """`_tf_params` of the MLPs on feat: the reward head, the actor, the critic and the slow critic."""
    a, every, out = meta["action_dim"], slice(None), []
    heads = {"reward": wm.heads["reward"], **({"discount": wm.heads["discount"]} if "discount" in wm.heads else {}),
             "actor": ac.actor, "critic": ac.critic, "slow": ac._target_critic}
    for prefix, mlp in heads.items():
        for i in range(meta["layers"]):
            dense = mlp._modules[f"dense{i}"]
            out += [(f"{prefix}/{2 * i}.weight", dense.kernel, every, feat_cols if i == 0 else None),
                    (f"{prefix}/{2 * i}.bias", dense.bias, every, None)]
        last, dist = 2 * meta["layers"], mlp._modules["out"]
        if prefix == "actor" and not meta.get("discrete_actions"):  # ours [2A] = the reference's `out` and `std`
            for name, rows in (("out", slice(0, a)), ("std", slice(a, 2 * a))):
                out += [(f"{prefix}/{last}.weight", dist._modules[name].kernel, rows, None),
                        (f"{prefix}/{last}.bias", dist._modules[name].bias, rows, None)]
        else:
            out += [(f"{prefix}/{last}.weight", dist._modules["out"].kernel, every, None),
                    (f"{prefix}/{last}.bias", dist._modules["out"].bias, every, None)]
    return out


def _to_tf(value: np.ndarray, rows: slice, cols: np.ndarray | str | None) -> np.ndarray:
    """Our parameter as the reference's variable holds it (`_tf_params`' rows and columns)."""
    if value.ndim == 1:
        return value[rows]
    if isinstance(cols, str):  # "conv": [out, in, k, k] -> [k, k, in, out]; transposed: [in, out, ...] -> [.., out, in]
        return value.transpose(2, 3, 1, 0)
    w = value[rows]
    return (w if cols is None else w[:, cols]).T


def from_tf(g: np.ndarray, like: np.ndarray, rows: slice, cols: np.ndarray | str | None) -> np.ndarray:
    """The reference's gradient of a variable in our parameter's layout, `_to_tf` inverted (the rows of `like` the
    variable does not hold stay zero: the actor's split output layer fills them from its two variables)."""
    out = np.zeros_like(like)
    block = out[rows]  # a view: writes go through
    if g.ndim == 1:
        block[...] = g
    elif isinstance(cols, str):
        block[...] = g.transpose(3, 2, 0, 1)
    elif cols is None:
        block[...] = g.T
    else:
        block[:, cols] = g.T
    return out


def replay_noise(rssm, tf):  # -> feed(queue, per_observe=False)
    """Make the reference RSSM's samples come from given random numbers, drawn as ours draws them: mean + std * z
    (Gaussian) or the inverse-CDF one-hot of a uniform, straight-through (categorical; `worldmodels.rssm`'s rule, the
    reference's own `OneHotDist` gradient). `feed(queue)` gives the numbers of the following samples in order (None:
    the reference draws its own); with `per_observe` every `observe` starts the queue again (TEMPO's two passes)."""
    state = {"queue": None, "i": 0, "per_observe": False}
    get_dist, observe = rssm.get_dist, rssm.observe

    def replaying_observe(*args, **kwargs):
        if state["per_observe"]:
            state["i"] = 0
        return observe(*args, **kwargs)

    def replaying_get_dist(stats, ensemble=False):
        dist = get_dist(stats, ensemble)
        if state["queue"] is None:
            return dist

        def sample(*_a, **_k):
            noise = state["queue"][state["i"]]
            state["i"] += 1
            if "logit" not in stats:
                return stats["mean"] + stats["std"] * noise
            probs = tf.nn.softmax(tf.cast(stats["logit"], tf.float32), -1)  # [B, S, K]
            cdf = tf.math.cumsum(tf.stop_gradient(probs), -1)
            idx = tf.minimum(tf.reduce_sum(tf.cast(cdf <= noise[..., None], tf.int32), -1), probs.shape[-1] - 1)
            return tf.one_hot(idx, probs.shape[-1]) + probs - tf.stop_gradient(probs)

        dist.sample = sample
        return dist

    rssm.get_dist, rssm.observe = replaying_get_dist, replaying_observe
    return lambda queue, per_observe=False: state.update(queue=queue, i=0, per_observe=per_observe)


def interleave(prior: np.ndarray, post: np.ndarray) -> list[np.ndarray]:
    """[T, B, S] each, ours [T, B] -> the order an observe samples them in: prior_0, post_0, prior_1, ..."""
    return [x for t in range(prior.shape[0]) for x in (prior[t], post[t])]


class Space:
    """A gym-like space: what the references' constructors read of one (`n`: a discrete action space's size)."""

    def __init__(self, shape: tuple[int, ...], n: int | None = None):
        self.shape = shape
        if n is not None:
            self.n = n


def reference_config(common, yaml, path: Path, meta: dict):  # -> the reference's common.Config
    """The reference's `dmc_proprio` config at `dmc_small`'s sizes (run_reference.sh's flags), from `configs.yaml`
    at `path` (danijar/dreamerv2's, or deng-ai-lab/TEMPO's, which has the same sections)."""
    configs = yaml.safe_load(path.read_text())
    image = meta["obs_key"] == "image"
    section = "atari" if meta.get("preset") == "atari" else "dmc_vision" if image else "dmc_proprio"
    config = common.Config(configs["defaults"]).update(configs[section])
    if image:
        config = config.update({"encoder.cnn_depth": meta["depth"], "encoder.cnn_kernels": meta["enc_kernels"],
                                "decoder.cnn_depth": meta["depth"], "decoder.cnn_kernels": meta["dec_kernels"]})
    units, layers = meta["units"], meta["layers"]
    return config.update({
        "precision": 32, "rssm.discrete": meta["discrete"], "rssm.deter": meta["deter"], "rssm.hidden": meta["hidden"],
        "rssm.stoch": meta["stoch"], "reward_head.layers": layers, "reward_head.units": units,
        "actor.layers": layers, "actor.units": units, "critic.layers": layers, "critic.units": units,
        "imag_horizon": meta["horizon"], "discount": meta["gamma"], "discount_lambda": meta["lambda"],
        "actor_ent": meta["ent_scale"], "actor.min_std": meta["min_std"],
        "encoder.mlp_layers": [units] * layers, "decoder.mlp_layers": [units] * layers,
        "kl.free": meta.get("kl_free", 1.0), "kl.balance": meta.get("kl_balance", 0.8),
        "loss_scales.kl": meta.get("kl_scale", 1.0), "loss_scales.discount": meta.get("discount_scale", 1.0),
        "pred_discount": meta.get("discount_head", False), "discount_head.layers": layers, "discount_head.units": units,
        "grad_heads": ["decoder", "reward"] + (["discount"] if meta.get("discount_head") else []),
        "actor_grad": meta.get("actor_grad", "dynamics"),
        "clip_rewards": "identity"})  # our batch's rewards are already transformed (`Run.to_torch`)


def build(ref_agent, config, inp: dict, meta: dict):  # -> (ActorCritic, WorldModel, start, data)
    """The reference's world model and actor-critic with our weights; the start states and the batch as its
    tensors ([B, T] batch-major, as its replay gives them)."""
    import tensorflow as tf

    obs_key = meta["obs_key"]
    wm = ref_agent.WorldModel(config, {obs_key: Space(inp[f"batch/{obs_key}"].shape[2:])}, tf.Variable(0, tf.int64))
    a = meta["action_dim"]
    ac = ref_agent.ActorCritic(config, Space((a,), a if meta.get("discrete_actions") else None), wm.tfstep)
    if meta["discrete"]:  # the reference keeps a categorical state [.., S, K]; ours flattens the one-hot sample
        s = inp["start/s"]
        start = {"stoch": s.reshape(*s.shape[:-1], meta["stoch"], meta["discrete"]), "deter": inp["start/h"],
                 "logit": inp["start/logits"]}
    else:
        start = {"stoch": inp["start/s"], "deter": inp["start/h"], "mean": inp["start/mean"], "std": inp["start/std"]}
    start = {k: tf.constant(v) for k, v in start.items()}
    seq = wm.imagine(ac.actor, start, None, 2)  # builds the variables (Keras builds a layer at its first call)
    ac.target({**seq, "reward": wm.heads["reward"](seq["feat"]).mode()}), ac.critic(seq["feat"])
    data = {k: tf.constant(np.swapaxes(inp[f"batch/{k}"], 0, 1).astype(np.uint8 if k == "image" else np.float32))
            for k in (obs_key, "action", "reward", "is_first", "is_terminal")}  # ours [T, B] -> [B, T]
    # the encoder's, the posterior's and the decoder's variables (TEMPO's WorldModel calls its loss model_loss)
    wm.loss(data) if hasattr(wm, "loss") else wm.model_loss(data, meta_weights=False)
    for name, var, rows, cols in _tf_params(wm, ac, meta):
        var.assign(_to_tf(inp[f"param/{name}"], rows, cols))
    return ac, wm, start, data


def reference(inp_path: Path, out_path: Path, seed: int) -> None:
    sys.path[:0] = [str(WORK / "dreamerv2"), str(WORK)]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import ruamel.yaml as yaml  # the reference reads its configs with it (ruamel.yaml < 0.18)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import agent as ref_agent  # danijar/dreamerv2's agent.py
    import common

    tf.config.run_functions_eagerly(True)  # the reference's tf.functions (RSSM.observe) run the replayed noise
    inp = dict(np.load(inp_path))
    meta = json.loads(str(inp.pop("meta")))
    config = reference_config(common, yaml, WORK / "dreamerv2" / "configs.yaml", meta)
    ac, wm, start, data = build(ref_agent, config, inp, meta)
    feed = replay_noise(wm.rssm, tf)
    discrete = bool(meta["discrete"])

    record: dict[str, list] = {"actor_mean": [], "actor_std": []}

    def policy(feat):  # the reference's actor, its distribution's parameters kept for `compare`
        dist = ac.actor(feat)
        if meta.get("discrete_actions"):
            record["actor_mean"].append(tf.nn.log_softmax(dist.logits_parameter()))  # normalised, as torch's
        else:
            record["actor_mean"].append(dist.distribution.loc)
            record["actor_std"].append(dist.distribution.scale)
        return dist

    tf.random.set_seed(seed)
    feed(list(inp["noise/imag"]) if discrete else None)  # categorical: replayed; Gaussian: the reference's own
    with tf.GradientTape() as actor_tape:  # ActorCritic.train's body, without the optimizer steps
        seq = wm.imagine(policy, start, None, meta["horizon"])
        seq["reward"], _ = ac.rewnorm(wm.heads["reward"](seq["feat"]).mode())  # the reference Agent's reward_fn
        target, mets2 = ac.target(seq)
        actor_loss, mets3 = ac.actor_loss(seq, target)
    with tf.GradientTape() as critic_tape:
        critic_loss, mets4 = ac.critic_loss(seq, target)
    ga = actor_tape.gradient(actor_loss, ac.actor.variables)
    gc = critic_tape.gradient(critic_loss, ac.critic.variables)
    grads = {id(v): g for v, g in zip(ac.actor.variables + ac.critic.variables, list(ga) + list(gc), strict=True)}

    wm_modules = [wm.encoder, wm.rssm, *wm.heads.values()]  # WorldModel.train's
    noise = [np.swapaxes(inp[f"noise/{k}"], 0, 1) for k in ("prior", "post")]  # [B, T, S]: the reference's order
    feed([x for t in range(noise[0].shape[1]) for x in (noise[0][:, t], noise[1][:, t])] if discrete else None)
    with tf.GradientTape() as model_tape:
        model_loss, _, outs, wm_metrics = wm.loss(data)
    wm_vars = [v for m in wm_modules for v in m.variables]
    grads |= {id(v): g for v, g in zip(wm_vars, model_tape.gradient(model_loss, wm_vars), strict=True)}
    post, prior = outs["post"], outs["prior"]

    obs_key, deter = meta["obs_key"], meta["deter"]
    feat = seq["feat"].numpy()
    res = {"feat": np.concatenate([feat[..., -deter:], feat[..., :-deter]], -1),  # to ours: cat(h, s)
           "reward": seq["reward"].numpy(), "value": ac._target_critic(seq["feat"]).mode().numpy(),
           **({"actor_logits": np.stack([m.numpy() for m in record["actor_mean"][1:]])}
              if meta.get("discrete_actions") else  # [0]: imagine's zero action
              {"actor_mean": np.stack([m.numpy() for m in record["actor_mean"][1:]]),
               "actor_std": np.stack([s.numpy() for s in record["actor_std"][1:]])}),
           "action": seq["action"].numpy()[1:],  # [H, N, A]: seq's action 0 is the start's zeros
           # the imagination's prior noise as ours takes it: the replayed uniforms, or the reference's own normals
           "prior_eps": (inp["noise/imag"] if discrete else
                         ((seq["stoch"][1:] - seq["mean"][1:]) / seq["std"][1:]).numpy()),
           "actor_loss": actor_loss.numpy(), "critic_loss": critic_loss.numpy(),
           "actor_ent": mets3["actor_ent"].numpy(), "critic_target": mets2["critic_target"].numpy(),
           "critic_value": mets4["critic"].numpy(),
           "wm/loss": model_loss.numpy(), "wm/nll_obs": wm_metrics[f"{obs_key}_loss"].numpy(),
           "wm/nll_reward": wm_metrics["reward_loss"].numpy(), "wm/kl_value": wm_metrics["model_kl"].numpy(),
           **({"wm/nll_discount": wm_metrics["discount_loss"].numpy()} if "discount" in wm.heads else {}),
           "wm/post_eps": (noise[1] if discrete else ((post["stoch"] - post["mean"]) / post["std"]).numpy()),
           **{f"wm/post_{k}": post[r].numpy() for k, r in zip(STATS[discrete], REF_STATS[discrete], strict=True)},
           **{f"wm/prior_{k}": prior[r].numpy() for k, r in zip(STATS[discrete], REF_STATS[discrete], strict=True)}}
    for name, var, rows, cols in _tf_params(wm, ac, meta):
        kind = name.split("/")[0]
        if kind == "slow" or id(var) not in grads:
            continue
        key = f"grad/{kind}/{name.split('/', 1)[1]}"
        g = grads[id(var)].numpy()
        res[key] = res.get(key, 0) + from_tf(g, inp[f"param/{name}"], rows, cols)
    np.savez(out_path, **{k: np.asarray(v, np.float32) for k, v in res.items()})
    print(f"reference: actor loss {float(actor_loss):.6g}, critic loss {float(critic_loss):.6g} -> {out_path}")


def summary(paths: list[Path]) -> None:
    """Per file and label, per gradient family: the smallest cosine / the range of norm ratios / the largest relative
    difference (rows zero in both left out); and the largest relative difference of the other quantities."""
    for path in paths:
        d = json.loads(path.read_text())
        print(f"{path.name} ({d['meta']['frames']} frames)")
        labels = dict.fromkeys(r["label"] for r in d["rows"])
        for label in labels:
            rows = [r for r in d["rows"] if r["label"] == label]
            for fam in dict.fromkeys(_family(r["quantity"]) for r in rows if r["quantity"].startswith("grad")):
                g = [r for r in rows if r["quantity"].startswith(fam + "/") and "cos" in r and not r.get("both_zero")]
                zero = sum(bool(r.get("both_zero") or r.get("negligible")) for r in rows
                           if r["quantity"].startswith(fam + "/"))
                print(f"  {label:32s} {fam:14s} {min(r['cos'] for r in g):.6f} / {min(r['norm_ratio'] for r in g):.4f}"
                      f"-{max(r['norm_ratio'] for r in g):.4f} / {max(r['rel'] for r in g):.1e}"
                      + (f"  ({zero} zero in both)" if zero else ""))
            other = [r for r in rows if not r["quantity"].startswith("grad")]
            worst = max(other, key=lambda r: r["rel"])
            print(f"  {label:32s} {'other':14s} {worst['rel']:.1e} ({worst['quantity']})")


def fixture(out: Path, inp: Path, ref: Path, tempo_ref: Path) -> None:
    """One compressed file of an export and both references' outputs (keys `ref/...`, `tref/...`): the test fixture
    `tests/test_reference_fixture.py` reads."""
    arrays = dict(np.load(inp))
    arrays |= {f"ref/{k}": v for k, v in np.load(ref).items()}
    arrays |= {f"tref/{k}": v for k, v in np.load(tempo_ref).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"{len(arrays)} arrays -> {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("run", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--batch-seed", type=int, default=0)
    t = sub.add_parser("export-tiny", help="a fresh tiny tempo-official run and a synthetic batch (the test fixture)")
    t.add_argument("out", type=Path)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--pixels", action="store_true", help="dmc_pixels: the conv encoder and decoder")
    t.add_argument("--discrete", type=int, default=0, help="K > 0: dmc_state's categorical latents, K classes")
    t.add_argument("--atari", action="store_true", help="the atari preset on Pong: discrete actions, discount head")
    r = sub.add_parser("reference")
    r.add_argument("inp", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare")
    c.add_argument("inp", type=Path)
    c.add_argument("ref", type=Path)
    c.add_argument("--json", type=Path)
    f = sub.add_parser("fixture", help="merge an export and both references' outputs into one file")
    for name in ("out", "inp", "ref", "tempo_ref"):
        f.add_argument(name, type=Path)
    m = sub.add_parser("summary", help="summarise compare's JSON files (this script's or same_batch_tempo.py's)")
    m.add_argument("json", type=Path, nargs="+")
    args = p.parse_args()
    if args.cmd == "export":
        export_run(args.run, args.out, args.batch_seed)
    elif args.cmd == "export-tiny":
        export_tiny(args.out, args.seed, args.pixels, args.discrete, args.atari)
    elif args.cmd == "reference":
        reference(args.inp, args.out, args.seed)
    elif args.cmd == "summary":
        summary(args.json)
    elif args.cmd == "fixture":
        fixture(args.out, args.inp, args.ref, args.tempo_ref)
    else:
        compare(args.inp, args.ref, args.json)


if __name__ == "__main__":
    main()
