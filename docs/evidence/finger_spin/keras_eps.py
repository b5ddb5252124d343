"""Does Keras' placement of Adam's eps explain the actor's early entropy collapse on finger_spin? A counterfactual run.

The references train with TF's Adam, which adds eps to √v *before* the bias correction: its effective eps at update t
is eps/√(1 − β2^t), 31.6x torch's at the first update and 3.2x at the 100th (docs/FIDELITY.md, "Known and not
reproduced"). The actor's collapse happens in exactly those first few hundred updates, so a larger effective eps
might damp it. This script runs `recipes.tempo` with every Adam that `make_optimizer` builds (world model, actor,
critic, weighter) switched to Keras' placement when KERAS_EPS=1, and as it is otherwise:

    KERAS_EPS=0 python docs/evidence/finger_spin/keras_eps.py --task finger_spin --preset dmc_small --weighting none \
        --seed 0 --steps 8000 --run.precision 32 --run.threads 1 --logdir /tmp/keras_eps/k0
    KERAS_EPS=1 python docs/evidence/finger_spin/keras_eps.py ... --logdir /tmp/keras_eps/k1

then compare `agent/actor_ent` in the two `metrics.jsonl`. A diagnostic, not a framework option: it swaps the class
of the optimizers that `make_optimizer` returns.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import torch

import agents.actor_critic
import bilevel.trainer
import bilevel.updater


class KerasAdam(torch.optim.Adam):
    """torch's Adam with eps scaled to Keras' placement for the step it is about to take: torch divides by
    √v̂ + eps = √v/√(1 − β2^t) + eps, Keras by (√v + eps)/√(1 − β2^t), the same with eps/√(1 − β2^t) in torch's."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        saved = []
        for group in self.param_groups:
            steps = [self.state[p]["step"] for p in group["params"] if "step" in self.state.get(p, {})]
            t = int(steps[0]) + 1 if steps else 1
            saved.append(group["eps"])
            group["eps"] = group["eps"] / math.sqrt(1 - group["betas"][1] ** t)
        try:
            return super().step(closure)
        finally:
            for group, eps in zip(self.param_groups, saved, strict=True):
                group["eps"] = eps


_make_optimizer = bilevel.updater.make_optimizer


def make_optimizer(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
    opt = _make_optimizer(*args, **kwargs)
    if os.environ.get("KERAS_EPS") == "1" and type(opt) is torch.optim.Adam:
        opt.__class__ = KerasAdam
    return opt


for module in (bilevel.updater, bilevel.trainer, agents.actor_critic):  # every place that imported it by name
    module.make_optimizer = make_optimizer

if __name__ == "__main__":
    from recipes.tempo import main

    sys.exit(main())
