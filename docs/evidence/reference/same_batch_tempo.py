"""One TEMPO world-model update, ours against deng-ai-lab/TEMPO's own code, with the same weights and noise.

The flagship's counterpart of `same_batch.py` (which compares DreamerV2's update with danijar/dreamerv2): one of
our TEMPO checkpoints' world model, weighter and slow critic go into the official TEMPO code's `WorldModel`, whose
`train` then runs as published (V-VAML through its value BatchNorm, the weighter, the weighted ELBO, and the
α-gradient as the forward-mode JVP of ∂L_low/∂α along ∇θ L_up), with its optimizers replaced by recorders that keep
the gradients and apply nothing. Ours is `BilevelTrainer.forward` / `lower_grad` / `alpha_grad` on the same batch:
the run's own settings (`tempo-official`: sign official, θ'≈θ, unit scale, and its contraction) and each
contraction named by `--contractions`.

Both sides replay the same prior and posterior noise (`noise/prior`, `noise/post`, drawn by
`same_batch.py export`; the prior's sample is V-VAML's V(s_prior)) in every pass of the step: ours makes one pass,
the official code two (one for the upper loss, one for the lower), each of which would draw its own noise
(docs/FIDELITY.md, "Known and not reproduced"); with the same numbers they are the same pass. `noise` measures
what the official second pass's own noise changes: the official α-gradient under many draws, with the second pass
on the first pass's numbers and on its own (`noise-summary` compares them).

    python docs/evidence/reference/same_batch.py export RUN /tmp/sbt/in.npz      # RUN: a tempo-official run
    WORK_TEMPO=/tmp/tempo_ref /tmp/refenv/bin/python docs/evidence/reference/same_batch_tempo.py reference \\
        /tmp/sbt/in.npz /tmp/sbt/ref.npz
    python docs/evidence/reference/same_batch_tempo.py compare /tmp/sbt/in.npz /tmp/sbt/ref.npz [--json OUT]
    WORK_TEMPO=/tmp/tempo_ref /tmp/refenv/bin/python docs/evidence/reference/same_batch_tempo.py noise \\
        /tmp/sbt/in.npz /tmp/sbt/noise.npz --draws 32
    python docs/evidence/reference/same_batch_tempo.py noise-summary /tmp/sbt/noise.npz [--json OUT]

WORK_TEMPO is a copy of deng-ai-lab/TEMPO (`run_reference.sh setup-tempo`). Compared: the normalised values'
upper loss, the weights, the weighted lower loss, ∇θ L_up (encoder + RSSM), ∇θ L_low (the whole world model) and
the α-gradient, per weighter parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import same_batch as sb  # noqa: E402  (beside this file; numpy only at import)

WORK_TEMPO = Path(os.environ.get("WORK_TEMPO", "/tmp/tempo_ref"))


def _weighter_params(wm, meta: dict) -> list[tuple[str, object]]:
    """(our weighter parameter name, the official weighter's variable): Dense → BatchNorm → ELU blocks, then
    Dense(1) → BatchNorm, as ours (`bilevel.MetaWeighter`, net.3i / net.3i+1, the output at net.3L / net.3L+1).
    Its input is [h, post mean, prior mean, v_post, v_prior] in both: no permutation."""
    mlp, out = wm.meta, []
    hidden = meta["weighter_layers"] - 1
    blocks = [(f"dense{i}", f"norm{i}", 3 * i) for i in range(hidden)] + [("dense_out", "norm_out", 3 * hidden)]
    for dense, norm, i in blocks:
        d, n = mlp._modules[dense], mlp._modules[norm]._layer
        out += [(f"net.{i}.weight", d.kernel), (f"net.{i}.bias", d.bias),
                (f"net.{i + 1}.weight", n.gamma), (f"net.{i + 1}.bias", n.beta)]
    return out


class Recorder:
    """Stands in for one of the official `common.Optimizer`s inside `WorldModel.train`: gradients are computed as it
    computes them and kept; nothing is applied."""

    def __init__(self, real):
        self.real, self.kept = real, {}

    def get_grads(self, tape, loss, modules):  # the official ∇θ L_up (and ∂L_low/∂α), unchanged
        grads = self.real.get_grads(tape, loss, modules)
        self.kept.setdefault("get_grads", []).append((loss, grads))
        return grads

    def __call__(self, tape, loss, modules):  # the model's step: ∇θ L_low as `Optimizer.__call__` takes it
        import tensorflow as tf

        varibs = tf.nest.flatten([m.variables for m in modules])
        self.kept["step"] = (loss, varibs, tape.gradient(loss, varibs))
        return {}

    def apply_grads(self, grads, modules):  # the meta step: the α-gradient
        self.kept["apply"] = grads
        return {}


def official(inp: dict, meta: dict):  # -> step(queue, per_observe) -> dict of arrays
    """The official TEMPO `WorldModel.train` on the exported batch with our checkpoint's weights, as a function of
    the noise its passes draw (`replay_noise`'s queue): each call runs the published step with recorders for
    optimizers and returns its quantities, named as `ours` names them. Nothing is applied, so calls are independent
    (the BatchNorms run in training mode: batch statistics)."""
    sys.path[:0] = [str(WORK_TEMPO)]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import ruamel.yaml as yaml
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.run_functions_eagerly(True)  # any tf.function runs the replayed noise
    import agent as tempo_agent  # deng-ai-lab/TEMPO's agent.py
    import common

    if not meta["weighter_layers"]:
        raise SystemExit("error: the export holds no weighter: export a TEMPO run")
    units = inp["param/weighter/net.0.weight"].shape[0]
    config = sb.reference_config(common, yaml, WORK_TEMPO / "configs.yaml", meta).update(
        {"meta.layers": meta["weighter_layers"] - 1, "meta.units": units})
    ac, wm, _, data = sb.build(tempo_agent, config, inp, meta)
    value_fn = ac._target_critic  # Agent.train passes the slow critic
    feed = sb.replay_noise(wm.rssm, tf)
    model_opt, meta_opt = wm.model_opt, wm.meta_opt
    wm.model_opt, wm.meta_opt = Recorder(model_opt), Recorder(meta_opt)
    feed(None)
    wm.train(data, value_fn)  # builds the weighter's variables (Keras builds at the first call)
    for name, var in _weighter_params(wm, meta):
        value = inp[f"param/weighter/{name}"]
        var.assign(value.T if value.ndim == 2 else value)  # Keras kernels are [in, out]

    def step(queue: list, per_observe: bool) -> dict[str, np.ndarray]:
        feed(queue, per_observe=per_observe)
        wm.model_opt, wm.meta_opt = Recorder(model_opt), Recorder(meta_opt)
        _, outputs, metrics = wm.train(data, value_fn)  # the official step, its optimizers recording
        upper, g_up = wm.meta_opt.kept["get_grads"][0]  # ∇θ L_up, over the encoder's and the RSSM's variables
        lower, varibs, g_low = wm.model_opt.kept["step"]
        grads = {id(v): g for v, g in zip(varibs, g_low, strict=True)}
        upper_vars = tf.nest.flatten([m.variables for m in (wm.encoder, wm.rssm)])
        grads_up = dict(zip(map(id, upper_vars), g_up, strict=True))
        res = {"upper": upper.numpy(), "lower": lower.numpy(), "w": outputs["weights"].numpy().T,  # [B, T] -> [T, B]
               "kl": metrics["kl"].numpy()}
        for name, var, rows, cols in sb._tf_params(wm, ac, meta):
            kind = name.split("/")[0]
            if kind in ("encoder", "rssm", "decoder", "reward", "discount"):
                res[f"grad_lower/{name}"] = sb.from_tf(grads[id(var)].numpy(), inp[f"param/{name}"], rows, cols)
                if kind in ("encoder", "rssm"):
                    res[f"grad_upper/{name}"] = sb.from_tf(grads_up[id(var)].numpy(), inp[f"param/{name}"], rows,
                                                           cols)
        alpha = dict(zip(map(id, _meta_vars(wm.meta)), wm.meta_opt.kept["apply"], strict=True))  # the α-gradient
        for name, var in _weighter_params(wm, meta):
            g = alpha[id(var)].numpy()
            res[f"grad_alpha/{name}"] = g.T if g.ndim == 2 else g
        return res

    return step


def reference(inp_path: Path, out_path: Path) -> None:
    inp = dict(np.load(inp_path))
    meta = json.loads(str(inp.pop("meta")))
    step = official(inp, meta)
    # The same noise in every pass: each observe samples the prior, then the posterior, at every step.
    res = step(sb.interleave(inp["noise/prior"], inp["noise/post"]), per_observe=True)
    np.savez(out_path, **{k: np.asarray(v, np.float32) for k, v in res.items()})
    print(f"official TEMPO: upper {float(res['upper']):.6g}, lower {float(res['lower']):.6g}, weights "
          f"{res['w'].mean():.4f} ± {res['w'].std():.4f} -> {out_path}")


def noise(inp_path: Path, out_path: Path, draws: int, seed: int) -> None:
    """The official step's α-gradient under `draws` draws of the world model's noise, two ways per draw k: both
    passes on the same numbers ε_k (`shared`: what our one pass computes) and the second, lower pass on its own
    numbers ε'_k (`fresh`: the official code as published). Paired: the upper pass sees ε_k in both."""
    inp = dict(np.load(inp_path))
    meta = json.loads(str(inp.pop("meta")))
    if meta["config"]["world_model"]["discrete"]:
        raise SystemExit(f"error: {inp_path} has categorical latents; `noise` draws Gaussian ones (DMC's)")
    step = official(inp, meta)
    rng = np.random.default_rng(seed)
    shape = inp["noise/prior"].shape  # [T, B, S]
    draw = lambda: sb.interleave(*(rng.standard_normal(shape, np.float32) for _ in range(2)))  # noqa: E731
    keys = sorted(k for k in inp if k.startswith("param/weighter/"))
    out = {"draws": np.int64(draws), "seed": np.int64(seed)}
    for mode in ("shared", "fresh"):
        out |= {f"{mode}/{k.split('/', 2)[2]}": np.zeros((draws, *inp[k].shape), np.float32) for k in keys}
        out[f"{mode}/upper"], out[f"{mode}/lower"] = np.zeros(draws, np.float32), np.zeros(draws, np.float32)
    for k in range(draws):
        first, second = draw(), draw()
        for mode, res in (("shared", step(first, per_observe=True)), ("fresh", step(first + second, False))):
            for key in res:
                if key.startswith("grad_alpha/"):
                    out[f"{mode}/{key.split('/', 1)[1]}"][k] = res[key]
            out[f"{mode}/upper"][k], out[f"{mode}/lower"][k] = res["upper"], res["lower"]
        print(f"draw {k + 1}/{draws}: upper {out['shared/upper'][k]:.5g}, lower {out['shared/lower'][k]:.5g} "
              f"(shared) / {out['fresh/lower'][k]:.5g} (fresh)", flush=True)
    np.savez(out_path, **out)


def noise_summary(path: Path) -> dict:
    """How the official step's second-pass noise moves its α-gradient, over all the weighter's parameters: the
    squared norm of the mean paired difference E[shared − fresh] (a U-statistic: the noise of the sample mean
    subtracted) relative to the fresh mean's (`bias2_rel`), beside the size that noise alone gives the sample mean's
    difference (`noise_rel`), and the spread of single draws, tr Cov / ||mean||² per mode; 95% jackknife CIs."""
    out = dict(np.load(path))
    names = sorted(k.split("/", 1)[1] for k in out if k.startswith("shared/") and k.count("/") == 1
                   and k.split("/")[1] not in ("upper", "lower"))
    flat = {m: np.concatenate([out[f"{m}/{k}"].reshape(len(out[f"{m}/{k}"]), -1) for k in names], 1)
            .astype(np.float64) for m in ("shared", "fresh")}
    n = len(flat["shared"])
    x = np.concatenate([flat["shared"], flat["fresh"], flat["shared"] - flat["fresh"]])  # [3n, P]: s, f, d = s - f
    gram = x @ x.T  # every statistic below is one of these dot products: the bootstrap resamples rows of it

    def stats(idx: np.ndarray) -> dict:
        s, f, d = idx, idx + n, idx + 2 * n
        dot = lambda a, b: float(gram[np.ix_(a, b)].mean())  # noqa: E731  (mean of a's rows) · (mean of b's rows)
        spread = lambda a: (np.diag(gram)[a].sum() - len(a) * dot(a, a)) / (len(a) - 1)  # noqa: E731  tr Cov
        ss, ff = dot(s, s), dot(f, f)
        # ||E d||²: the squared norm of the mean difference less its expected excess, tr(Cov d)/n (unbiased).
        bias2 = dot(d, d) - spread(d) / len(idx)
        paired = gram[s, f] / np.sqrt(gram[s, s] * gram[f, f])
        return {"cos_means": dot(s, f) / np.sqrt(ss * ff), "norm_ratio": float(np.sqrt(ss / ff)),
                "bias2_rel": float(bias2 / ff), "noise_rel": float(np.sqrt(spread(d) / len(idx) / ff)),
                "spread_shared": float(spread(s) / ss), "spread_fresh": float(spread(f) / ff),
                "cos_paired": float(paired.mean())}

    # Jackknife (leave one draw out) standard errors: the statistics are smooth in the draws' means, and a bootstrap
    # resample's repeated draws would bias the U-statistic bias2.
    full = stats(np.arange(n))
    loo = [stats(np.delete(np.arange(n), i)) for i in range(n)]
    se = {k: float(np.sqrt((n - 1) / n * np.sum((v - v.mean()) ** 2)))
          for k, v in ((k, np.array([r[k] for r in loo])) for k in full)}
    ci = {k: [full[k] - 1.96 * se[k], full[k] + 1.96 * se[k]] for k in full}
    return {"file": str(path), "draws": n, "parameters": int(flat["shared"].shape[1]), "all": full, "ci95": ci,
            "upper": [float(out["shared/upper"].mean()), float(out["shared/upper"].std())],
            "lower": {m: [float(out[f"{m}/lower"].mean()), float(out[f"{m}/lower"].std())]
                      for m in ("shared", "fresh")}}


def _meta_vars(mlp) -> list:
    """The weighter's variables as the official `get_grads` / `apply_grads` list them: without BatchNorm's moving
    statistics."""
    return [v for v in mlp.variables if v.name[-6:-2] != "mean" and v.name[-10:-2] != "variance"]


def ours(run, inp: dict) -> dict[str, np.ndarray]:
    """Our step's quantities on the same batch and noise (the run's trainer: its strategy, sign and contraction)."""
    import torch

    rssm, trainer, problem = run.wm.rssm, run.trainer, run.problem
    batch = {k.split("/", 1)[1]: torch.from_numpy(v) for k, v in inp.items() if k.startswith("batch/")}
    with sb.replaying(rssm, *(torch.from_numpy(inp[f"noise/{k}"]) for k in ("prior", "post"))):  # every pass
        sc = trainer.forward(problem, batch)
        g_low = trainer.lower_grad(sc, meta=True)
        g_alpha = trainer.alpha_grad(sc)
        upper, g_up = sc.upper_value(), sc.upper_grad()  # both computed by now, and cached
    names = [n for n, _ in run.wm.named_parameters()]
    prefix = {"encoder": "encoder", "rssm": "rssm", "decoder": "decoder", "reward_head": "reward",
              "discount_head": "discount"}
    ours_name = lambda n: f"{prefix[n.split('.')[0]]}/{n.split('.', 1)[1]}"  # noqa: E731
    res = {"upper": np.float32(upper), "lower": sc.lower.detach().numpy(), "w": sc.w.detach().numpy(),
           "kl": sc.losses["kl"].detach().mean().numpy()}
    res |= {f"grad_lower/{ours_name(n)}": g.numpy() for n, g in zip(names, g_low, strict=True)}
    up_names = set(problem.upper_parameter_names())  # g_up covers θ, zero outside encoder + RSSM
    res |= {f"grad_upper/{ours_name(n)}": g.numpy() for n, g in zip(names, g_up, strict=True) if n in up_names}
    res |= {f"grad_alpha/{n}": g.numpy() for (n, _), g in zip(trainer.weighter.named_parameters(), g_alpha,
                                                                 strict=True)}
    res["contraction"] = trainer.cfg.contraction
    return res


def compare_step(inp: dict, ref: dict, contractions: list[str]) -> list[dict]:
    """`same_batch.compare_rows` of our TEMPO step against the official one (`reference`'s output `ref`), with the
    run's contraction and each of `contractions`."""
    import tempfile

    meta = json.loads(str(inp["meta"]))
    rows = []
    for contraction in [None, *contractions]:
        overrides = None if contraction is None else {"tempo": {"bilevel": {"contraction": contraction}}}
        with tempfile.TemporaryDirectory() as tmp:
            mine = ours(sb.make_run(inp, meta, Path(tmp), overrides), inp)
        label = f"ours, {mine.pop('contraction')}" + (" (the run's)" if contraction is None else "")
        rows += sb.compare_rows(ref, mine, label)
    return rows


def compare(inp_path: Path, ref_path: Path, contractions: list[str], json_out: Path | None) -> None:
    inp, ref = dict(np.load(inp_path)), dict(np.load(ref_path))
    sb.report(compare_step(inp, ref, contractions), inp, json_out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("inp", type=Path)
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("inp", type=Path)
    c.add_argument("ref", type=Path)
    c.add_argument("--contractions", default="double_backward",
                   help="comma-separated contractions to compare besides the run's own")
    c.add_argument("--json", type=Path)
    n = sub.add_parser("noise", help="the official α-gradient under many noise draws, shared or fresh second pass")
    n.add_argument("inp", type=Path)
    n.add_argument("out", type=Path)
    n.add_argument("--draws", type=int, default=32)
    n.add_argument("--seed", type=int, default=0)
    ns = sub.add_parser("noise-summary", help="the bias and spread of `noise` outputs (numpy only)")
    ns.add_argument("files", type=Path, nargs="+")
    ns.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.cmd == "reference":
        reference(args.inp, args.out)
    elif args.cmd == "noise":
        if args.draws < 3:  # noise-summary's spread and jackknife need at least 3
            p.error(f"--draws {args.draws}: at least 3")
        noise(args.inp, args.out, args.draws, args.seed)
    elif args.cmd == "noise-summary":
        rows = [noise_summary(f) for f in args.files]
        for row in rows:
            a, ci = row["all"], row["ci95"]
            print(f"{row['file']}: {row['draws']} draws, {row['parameters']} weighter parameters")
            for k, v in a.items():
                print(f"  {k:14s} {v:9.4f}  [{ci[k][0]:.4f}, {ci[k][1]:.4f}]")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    else:
        compare(args.inp, args.ref, [x for x in args.contractions.split(",") if x], args.json)


if __name__ == "__main__":
    main()
