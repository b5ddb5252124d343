"""Meta-Weight-Net-style sample reweighting under label noise: a second, non-world-model instance of
the generic bilevel framework in `bilevel/`.

Data: scikit-learn's digits (1797 8x8 images, 10 classes; shipped with the package, no download).
Features are standardised with training-set statistics. A stratified, seeded split gives a test set,
a small CLEAN meta set (`meta_per_class` per class) and a training set whose labels are corrupted with
symmetric noise: each training label is corrupted with probability `noise`, and a corrupted label is
drawn uniformly from the OTHER 9 classes.

    lower:  θ*(α) = argmin_θ  mean_i  w_i · CE(f_θ(x_i), ỹ_i)        (noisy training minibatch)
    upper:  min_α  mean_j CE(f_θ*(α)(x'_j), y'_j)                   (clean meta set)
    w_i = N_α(features_i)

Two classifiers are trained from the SAME initialisation with the SAME minibatch order: a uniform one
(`strategy='none'`, all w_i = 1) and a meta-weighted one (`approx` by default, or `unroll`/`implicit`).

Run:  python -m recipes.noisy_labels --noise 0.4 --seed 0 [--epochs 40 --strategy approx ...]
The last line of stdout is a JSON object with the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from bilevel import BilevelConfig, BilevelProblem, BilevelTrainer, Params, WeighterConfig
from bilevel.contractions import CONTRACTIONS
from bilevel.engines import ENGINES
from bilevel.strategies import STRATEGIES as STRATEGY_REGISTRY

NUM_CLASSES = 10
# The registries decide what exists; this recipe trains a weighter, so only strategies that have one.
STRATEGIES = [s for s in STRATEGY_REGISTRY if STRATEGY_REGISTRY[s].uses_weighter]


# ---- data -------------------------------------------------------------------------------------------
def corrupt_labels(y: np.ndarray, noise: float, rng: np.random.Generator,
                   num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric noise: flip each label w.p. `noise` to a class drawn uniformly from the other ones.

    Returns (noisy labels, boolean mask of corrupted samples)."""
    flip = rng.random(len(y)) < noise
    offset = rng.integers(1, num_classes, size=len(y))  # 1..K-1: never the true class
    noisy = np.where(flip, (y + offset) % num_classes, y)
    return noisy, flip


def load_data(noise: float, seed: int, meta_per_class: int = 10, test_fraction: float = 0.3) -> dict[str, Any]:
    """Digits, split stratified & seeded into train (noisy) / meta (clean) / test (clean), standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    x_train, x_meta, y_train, y_meta = train_test_split(
        x_rest, y_rest, test_size=meta_per_class * NUM_CLASSES, stratify=y_rest, random_state=seed)
    scaler = StandardScaler().fit(x_train)  # features only; labels (and their noise) are not used
    rng = np.random.default_rng(seed)
    y_noisy, corrupted = corrupt_labels(y_train, noise, rng)

    def t(a: np.ndarray) -> Tensor:
        return torch.as_tensor(scaler.transform(a), dtype=torch.float32)

    def lab(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=torch.long)

    return {
        "x_train": t(x_train), "y_train": lab(y_noisy), "y_train_true": lab(y_train),
        "corrupted": torch.as_tensor(corrupted), "x_meta": t(x_meta), "y_meta": lab(y_meta),
        "x_test": t(x_test), "y_test": lab(y_test),
    }


def make_mlp(in_dim: int = 64, hidden: int = 100, out_dim: int = NUM_CLASSES) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


# ---- the bilevel problem ----------------------------------------------------------------------------
class NoisyLabelsProblem(BilevelProblem):
    """Per-sample cross-entropy on a noisy training minibatch (lower), cross-entropy on the clean meta
    set with the same parameters (upper).

    Weighter inputs, per training sample (all detached, `[N, 2 + K]`):

    * the per-sample loss CE(f_θ(x_i), ỹ_i) — the Meta-Weight-Net input. Under symmetric noise a
      corrupted sample disagrees with what the network has learnt from the majority of clean samples,
      so its loss is large; the loss -> weight map is what MWN learns (decreasing for noisy labels);
    * the predicted probability of the given label p_θ(ỹ_i | x_i) = exp(-loss): the same information
      on a bounded [0, 1] scale, which is easier for a small MLP to threshold than the unbounded loss;
    * the one-hot given label ỹ_i: lets the weighter learn class-dependent behaviour (e.g. classes that
      are intrinsically harder, whose clean samples also have larger losses), as in CMW-Net's
      class-aware extension. It does not leak the true label: only the observed (noisy) one.
    """

    def __init__(self, model: nn.Module, x_meta: Tensor, y_meta: Tensor) -> None:
        self.model = model
        self.x_meta, self.y_meta = x_meta, y_meta

    feature_dim = 2 + NUM_CLASSES

    def lower_losses(self, batch: tuple[Tensor, Tensor], params: Params) -> tuple[Tensor, dict[str, Any]]:
        x, y = batch
        logits = self.call(params, x)
        losses = F.cross_entropy(logits, y, reduction="none")  # [N]
        return losses, {"params": params, "losses": losses, "y": y}

    @staticmethod
    def features(losses: Tensor, y: Tensor) -> Tensor:
        losses = losses.detach()
        p_given = torch.exp(-losses)
        onehot = F.one_hot(y, NUM_CLASSES).to(losses.dtype)
        return torch.cat([losses[:, None], p_given[:, None], onehot], dim=1)

    def weighter_inputs(self, ctx: dict[str, Any]) -> Tensor:
        return self.features(ctx["losses"], ctx["y"])

    def upper_objective(self, batch: Any, ctx: dict[str, Any]) -> Tensor:
        return F.cross_entropy(self.call(ctx["params"], self.x_meta), self.y_meta)

    def upper_losses(self, batch: Any, ctx: dict[str, Any]) -> Tensor:
        return ctx["losses"].detach()


# ---- training ---------------------------------------------------------------------------------------
def validate(noise: float, seed: int, epochs: int, strategy: str, contraction: str, engine: str,
             batch_size: int, lr: float, meta_lr: float, meta_per_class: int) -> None:
    """Raise ValueError naming the bad value and the accepted range, before any work."""
    if not (isinstance(noise, (int, float)) and 0.0 <= noise < 1.0):
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    CONTRACTIONS.check(contraction)
    ENGINES.check(engine)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not meta_lr > 0:
        raise ValueError(f"meta_lr must be > 0, got {meta_lr}")
    if not 1 <= meta_per_class <= 50:
        raise ValueError(f"meta_per_class must be in [1, 50], got {meta_per_class}")


def make_config(strategy: str, contraction: str, engine: str, meta_lr: float,
                sign: str = "correct") -> BilevelConfig:
    """The weighter: 2 dense layers of 100 units, no normalisation (tiny inputs, per-sample function).

    Output range (0, 2) = 2σ(z) instead of the default 0.5σ+0.75 ∈ (0.75, 1.25): with 40% noise a
    corrupted sample must be able to get (nearly) zero weight, which (0.75, 1.25) forbids (at best a
    0.6 ratio between noisy and clean weights). Unlike MWN we do not renormalise weights by their batch
    sum, so the range is centred on 1 (σ(0) = 0.5 -> w = 1): the effective lower learning rate starts
    where the uniform model's is, and the hypergradient must *learn* to lower noisy weights.
    No BatchNorm on the output logit either (TEMPO's weighter has one): it would force half the samples
    above and half below w = 1 in every batch, whatever their labels.
    Adam on α with eps 1e-8 and the derivative's scale (`approx_scale='lr'`): the correct hypergradient is
    scaled by -η (tiny for η = 1e-3), so the default eps 1e-5 would swamp it; with eps small Adam is nearly
    invariant to that scale.
    """
    weighter = WeighterConfig(layers=2, units=100, act="relu", norm="none", out_norm="none", out_scale=2.0,
                              out_shift=0.0, lr=meta_lr, eps=1e-8, weight_decay=0.0)
    return BilevelConfig(strategy=strategy, contraction=contraction, engine=engine, sign=sign,
                         approx_scale="lr", weighter=weighter)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def run(noise: float = 0.4, seed: int = 0, epochs: int = 40, strategy: str = "approx",
        contraction: str = "double_backward", engine: str = "native", batch_size: int = 100,
        lr: float = 1e-3, meta_lr: float = 1e-3, meta_per_class: int = 10, sign: str = "correct",
        verbose: bool = False, log_every: int = 10, num_threads: int | None = 1) -> dict[str, Any]:
    """Train uniform and meta-weighted classifiers; return test accuracies and weight/noise ROC AUC.

    `sign='official'` (approx only) flips the hypergradient's sign as the deng-ai-lab TEMPO code does;
    here it serves as a negative control (it wrecks the meta-weighted classifier).
    `num_threads`: torch intra-op threads during the run (restored after); 1 is fastest for this tiny
    MLP and robust on a shared CPU. None leaves torch's setting alone."""
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
    validate(noise, seed, epochs, strategy, contraction, engine, batch_size, lr, meta_lr, meta_per_class)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run(noise, seed, epochs, strategy, contraction, engine, batch_size, lr, meta_lr,
                    meta_per_class, sign, verbose, log_every)
    finally:
        torch.set_num_threads(previous_threads)


def _run(noise: float, seed: int, epochs: int, strategy: str, contraction: str, engine: str,
         batch_size: int, lr: float, meta_lr: float, meta_per_class: int, sign: str, verbose: bool,
         log_every: int) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    cfg = make_config(strategy, contraction, engine, meta_lr, sign)  # pydantic: bad combinations fail here
    t0 = time.perf_counter()
    data = load_data(noise, seed, meta_per_class)
    n_train = len(data["y_train"])

    torch.manual_seed(seed)
    init = make_mlp(data["x_train"].shape[1])
    models = {"uniform": copy.deepcopy(init), "meta": copy.deepcopy(init)}  # same init
    trainers = {}
    for name, model in models.items():
        c = cfg if name == "meta" else BilevelConfig(strategy="none")
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        trainers[name] = BilevelTrainer(model, NoisyLabelsProblem.feature_dim, c, lower_opt=opt)
    problems = {n: NoisyLabelsProblem(m, data["x_meta"], data["y_meta"]) for n, m in models.items()}

    order_rng = np.random.default_rng(seed + 1)
    log: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        perm = torch.as_tensor(order_rng.permutation(n_train))  # same minibatch order for both models
        metrics: dict[str, list[dict[str, float]]] = {n: [] for n in models}
        for start in range(0, n_train, batch_size):
            idx = perm[start:start + batch_size]
            batch = (data["x_train"][idx], data["y_train"][idx])
            for name in models:
                metrics[name].append(trainers[name].step(problems[name], batch).metrics)
        if verbose and (epoch % log_every == 0 or epoch == epochs or epoch == 1):
            acc = {n: accuracy(m, data["x_test"], data["y_test"]) for n, m in models.items()}
            up = {n: float(np.mean([m["upper_loss"] for m in metrics[n]])) for n in models}
            w_std = float(np.mean([m["weight_std"] for m in metrics["meta"]]))
            w_mean = float(np.mean([m["weight_mean"] for m in metrics["meta"]]))
            line = {"epoch": epoch, "test_acc_uniform": round(acc["uniform"], 4),
                    "test_acc_meta": round(acc["meta"], 4), "meta_loss_uniform": round(up["uniform"], 4),
                    "meta_loss_meta": round(up["meta"], 4), "weight_mean": round(w_mean, 3),
                    "weight_std": round(w_std, 3), "elapsed_s": round(time.perf_counter() - t0, 1)}
            log.append(line)
            print("progress " + " ".join(f"{k}={v}" for k, v in line.items()), flush=True)

    # Final weights the trained weighter gives every training sample (features from the final model).
    meta_model, weighter = models["meta"], trainers["meta"].weighter
    assert weighter is not None
    with torch.no_grad():
        losses = F.cross_entropy(meta_model(data["x_train"]), data["y_train"], reduction="none")
        w = weighter(NoisyLabelsProblem.features(losses, data["y_train"])).numpy()
    corrupted = data["corrupted"].numpy()
    clean = ~corrupted
    auc = float(roc_auc_score(clean, w)) if 0 < corrupted.sum() < n_train else None

    return {
        "uniform_test_acc": accuracy(models["uniform"], data["x_test"], data["y_test"]),
        "meta_test_acc": accuracy(meta_model, data["x_test"], data["y_test"]),
        "weight_auc_clean_vs_noisy": auc,
        "mean_weight_clean": float(w[clean].mean()) if clean.any() else None,
        "mean_weight_noisy": float(w[corrupted].mean()) if corrupted.any() else None,
        "noise_rate_realised": float(corrupted.mean()),
        "n_train": n_train, "n_meta": len(data["y_meta"]), "n_test": len(data["y_test"]),
        "seconds": round(time.perf_counter() - t0, 2),
        "noise": noise, "seed": seed, "epochs": epochs, "strategy": strategy,
        "contraction": contraction, "engine": engine, "sign": sign, "lr": lr, "meta_lr": meta_lr,
    }


# ---- CLI --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m recipes.noisy_labels", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noise", type=float, default=0.4, help="symmetric label-noise rate, in [0, 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--strategy", choices=STRATEGIES, default="approx")
    ap.add_argument("--contraction", choices=CONTRACTIONS.names(), default="double_backward")
    ap.add_argument("--engine", choices=ENGINES.names(), default="native")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the classifier (η)")
    ap.add_argument("--meta-lr", type=float, default=1e-3, help="Adam lr of the weighter")
    ap.add_argument("--meta-per-class", type=int, default=10, help="clean meta samples per class")
    ap.add_argument("--sign", choices=("correct", "official"), default="correct",
                    help="'official' flips the approx hypergradient (negative control)")
    ap.add_argument("--log-every", type=int, default=10, help="epochs between progress lines")
    args = ap.parse_args(argv)
    kwargs = dict(noise=args.noise, seed=args.seed, epochs=args.epochs, strategy=args.strategy,
                  contraction=args.contraction, engine=args.engine, batch_size=args.batch_size, lr=args.lr,
                  meta_lr=args.meta_lr, meta_per_class=args.meta_per_class)
    try:
        validate(**kwargs)
        make_config(args.strategy, args.contraction, args.engine, args.meta_lr, args.sign)
    except ValidationError as e:  # a bad strategy/contraction/engine combination
        ap.error("; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors()))
    except ValueError as e:
        ap.error(str(e))  # exit code 2, message on stderr, before any work
    if args.log_every < 1:
        ap.error(f"--log-every must be >= 1, got {args.log_every}")
    result = run(**kwargs, sign=args.sign, verbose=True, log_every=args.log_every)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
