"""Relative errors of the hypergradients issue 10 fixed, against independent float64 references.

    python docs/evidence/hypergrad_errors.py                      # this checkout
    git worktree add /tmp/before 3884447 && PYTHONPATH=/tmp/before python docs/evidence/hypergrad_errors.py

Uses only the trainer phases that exist before and after the fix (forward / lower_grad / alpha_grad), and the
references of `tests/test_hypergrad_exact.py` (copied here so the script runs against an older checkout):
* finite-difference contractions (native `finite_difference`, Betty `darts`) against `double_backward` on the
  TEMPO world model (`tests/test_tempo_problem.py`'s tiny RSSM, KL balancing active: kl_free = 0);
* unroll (native, higher) against central differences of L_up after the real torch optimizer's steps.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.append(str(Path(__file__).resolve().parents[2]))  # tests/ (PYTHONPATH, if set, comes first)

from bilevel import BilevelConfig, BilevelProblem, BilevelTrainer, stopgrad  # noqa: E402

HAS_SCALE = "approx_scale" in BilevelConfig.model_fields


def flat(gs) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gs])


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def alpha_grad(trainer, problem, batch, seed):
    torch.manual_seed(seed)
    sc = trainer.forward(problem, batch)
    trainer.lower_grad(sc)
    return flat(trainer.alpha_grad(sc))


# ---- finite-difference contractions on the TEMPO world model ------------------------------------------
def tempo_fd_errors() -> dict:
    from tests.test_tempo_problem import make

    out = {}
    for discrete in (0, 4):
        ref_p, ref_t, ref_b = make({"strategy": "approx", "contraction": "double_backward"}, discrete, kl_free=0.0)
        ref = alpha_grad(ref_t, ref_p, ref_b, 7)
        for name, cfg in {"native-finite_difference": {"contraction": "finite_difference"},
                          "betty-darts": {"contraction": "finite_difference", "engine": "betty"}}.items():
            p, t, b = make({"strategy": "approx", "fd_radius": 1e-4, **cfg}, discrete, kl_free=0.0)
            g = alpha_grad(t, p, b, 7)
            out[f"{name}/{'categorical' if discrete else 'gaussian'}"] = {"rel_err": rel(g, ref), "cosine": cos(g, ref)}
    return out


# ---- unroll against the real optimizer --------------------------------------------------------------------
class SGProblem(BilevelProblem):
    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
        self.batch = {"x": r(16, 3), "y": r(16), "f": r(16, 3), "xv": r(9, 3), "yv": r(9)}

    def lower_losses(self, batch, params):
        pred = self.call(params, batch["x"]).squeeze(-1) + 0.1 * torch.randn(16, dtype=torch.float64)
        return 0.5 * (pred - batch["y"]) ** 2 * (1 + stopgrad.sg(pred) ** 2), {"params": params}

    def weighter_inputs(self, ctx):
        return self.batch["f"]

    def upper_objective(self, batch, ctx):
        return 0.5 * ((self.call(ctx["params"], batch["xv"]).squeeze(-1) - batch["yv"]) ** 2).mean()


def upper_after_real_steps(problem, trainer, weighter, steps, seed, tapes, record) -> float:
    model = copy.deepcopy(problem.model)
    opt = type(trainer.lower_opt)(model.parameters())
    opt.load_state_dict(copy.deepcopy(trainer.lower_opt.state_dict()))
    for k in range(steps):
        torch.manual_seed(seed)
        with stopgrad.record(tapes[k]) if record else stopgrad.replay(tapes[k]):
            losses, _ = problem.lower_losses(problem.batch, dict(model.named_parameters()))
        loss = problem.lower_objective(losses, weighter(problem.batch["f"]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), trainer.lower_clip)
        opt.step()
    with torch.no_grad():
        return float(problem.upper_objective(problem.batch, {"params": dict(model.named_parameters())}))


def unroll_reference(problem, trainer, steps, seed, h=1e-6) -> torch.Tensor:
    tapes = [stopgrad.Tape() for _ in range(steps)]
    upper_after_real_steps(problem, trainer, trainer.weighter, steps, seed, tapes, True)
    weighter = copy.deepcopy(trainer.weighter)
    out = []
    for p in weighter.parameters():
        for j in range(p.numel()):
            vals = []
            for s in (1.0, -1.0):
                with torch.no_grad():
                    p.view(-1)[j] += s * h
                vals.append(upper_after_real_steps(problem, trainer, weighter, steps, seed, tapes, False))
                with torch.no_grad():
                    p.view(-1)[j] -= s * h
            out.append((vals[0] - vals[1]) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-5),
    "adamw(decoupled wd 0.5)": lambda ps: torch.optim.AdamW(ps, lr=0.01, eps=1e-5, weight_decay=0.5),
    "adam(decoupled_weight_decay=True, wd 1)": lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-5, weight_decay=1.0,
                                                                           decoupled_weight_decay=True),
    "adam(amsgrad)": lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-5, amsgrad=True),
    "adam(maximize)": lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-5, maximize=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
}


def unroll_errors() -> dict:
    out = {}
    for engine in ("native", "higher"):
        for opt_name, make_opt in OPTIMIZERS.items():
            for warm, steps, clip in ((0, 1, 100.0), (3, 1, 100.0), (3, 2, 0.05)):
                problem = SGProblem()
                extra = {"approx_scale": "lr"} if HAS_SCALE else {}
                cfg = BilevelConfig(strategy="unroll", engine=engine, unroll_steps=steps,
                                    weighter={"layers": 2, "units": 4}, **extra)
                try:
                    trainer = BilevelTrainer(problem.model, 3, cfg, lower_opt=make_opt(problem.model.parameters()),
                                             lower_clip=clip)
                except ValueError as e:
                    out[f"{engine}/{opt_name}/warm{warm}/K{steps}/clip{clip}"] = {"refused": str(e)}
                    continue
                torch.manual_seed(1)
                with torch.no_grad():
                    for p in trainer.weighter.parameters():
                        p.add_(0.3 * torch.randn_like(p))
                try:
                    for i in range(warm):
                        torch.manual_seed(100 + i)
                        trainer.step(problem, problem.batch)
                    g = alpha_grad(trainer, problem, problem.batch, 11)
                except ValueError as e:  # e.g. higher has no differentiable AdamW
                    out[f"{engine}/{opt_name}/warm{warm}/K{steps}/clip{clip}"] = {"refused": str(e)}
                    continue
                ref = unroll_reference(problem, trainer, steps, 11)
                out[f"{engine}/{opt_name}/warm{warm}/K{steps}/clip{clip}"] = {"rel_err": rel(g, ref)}
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps({"finite_difference_on_tempo": tempo_fd_errors(), "unroll": unroll_errors()}, indent=1))
