"""Per-step ELBO terms and the (meta-)weighted DreamerV2 world-model loss (TEMPO eq. 6, lower level).

TEMPO weights ELBO_t by w_t. Following the official code, w multiplies every per-step term - each negative
log-likelihood and both KL-balancing terms - *before* the batch means and the free-nats clamp:

    kl   = balance * max(mean(w * KL(sg(q) || p)), free) + (1 - balance) * max(mean(w * KL(q || sg(p))), free)
    loss = sum_k scale_k * mean(w * nll_k) + kl_scale * kl

With w = None (or w = 1) this is exactly DreamerV2's loss with `free_avg=True`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from worldmodels.nets import sg
from worldmodels.rssm import RSSM, State

KL_KEYS = ("kl_lhs", "kl_rhs", "kl")


def kl_divergence(q: State, p: State, rssm: RSSM) -> Tensor:
    """Closed-form KL(q || p) summed over the stochastic dims: [..., stoch(...)] -> [...]."""
    if rssm.discrete:
        lq = torch.log_softmax(q["logits"], -1)  # [..., stoch, discrete]
        lp = torch.log_softmax(p["logits"], -1)
        return (lq.exp() * (lq - lp)).sum((-2, -1))
    mq, sq, mp, sp = q["mean"], q["std"], p["mean"], p["std"]
    kl = torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5
    return kl.sum(-1)


def _sg(state: State) -> State:
    return {k: sg(v) for k, v in state.items()}


def kl_balance_terms(post: State, prior: State, rssm: RSSM) -> tuple[Tensor, Tensor, Tensor]:
    """(kl_lhs, kl_rhs, kl_value), each [T, B].

    kl_lhs = KL(sg(post) || prior) trains the prior, kl_rhs = KL(post || sg(prior)) trains the posterior,
    kl_value = KL(post || prior) with gradients to both (logging / analysis). Values are identical.
    """
    kl_lhs = kl_divergence(_sg(post), prior, rssm)
    kl_rhs = kl_divergence(post, _sg(prior), rssm)
    kl_value = kl_divergence(post, prior, rssm)
    return kl_lhs, kl_rhs, kl_value


def weighted_elbo_loss(terms: dict[str, Tensor], w: Tensor | None = None, balance: float = 0.8,
                       free: float = 1.0, kl_scale: float = 1.0,
                       loss_scales: dict[str, float] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar world-model loss from per-step terms ([T, B] each) and optional meta weights w [T, B].

    Every key of `terms` not in KL_KEYS is a negative log-likelihood ('image'/'state', 'reward',
    'discount'), scaled by loss_scales.get(key, 1). The free-nats clamp uses torch.maximum, so the KL
    gradient (also w.r.t. w) is exactly zero while the weighted mean KL is below `free`.
    Metrics are detached tensors (no host sync); unweighted means are reported alongside weighted ones.
    """
    scales = loss_scales or {}

    def wmean(x: Tensor) -> Tensor:
        return (x if w is None else w * x).mean()

    kl_lhs, kl_rhs = wmean(terms["kl_lhs"]), wmean(terms["kl_rhs"])
    free_t = torch.tensor(free, dtype=kl_lhs.dtype, device=kl_lhs.device)
    kl = balance * torch.maximum(kl_lhs, free_t) + (1 - balance) * torch.maximum(kl_rhs, free_t)
    loss = kl_scale * kl
    metrics: dict[str, Tensor] = {"kl_loss": kl.detach(), "kl_lhs": kl_lhs.detach(),
                                  "kl_rhs": kl_rhs.detach()}
    if "kl" in terms:
        metrics["kl_value"] = terms["kl"].detach().mean()
    for key, nll in terms.items():
        if key in KL_KEYS:
            continue
        nll_w = wmean(nll)
        loss = loss + scales.get(key, 1.0) * nll_w
        metrics[f"{key}_nll"] = nll.detach().mean()
        metrics[f"{key}_nll_w"] = nll_w.detach()
    metrics["loss"] = loss.detach()
    if w is not None:
        metrics["w_mean"] = w.detach().mean()
    return loss, metrics
