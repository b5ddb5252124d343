"""Our DreamerV2 update and TEMPO step against numbers the references' own code computed from the same inputs.

CI has no TensorFlow, so the references ran once, offline: `tests/fixtures/reference_tiny.npz` (states, Gaussian
latents: `dmc_small`), `reference_tiny_pixels.npz` (64 x 64 pixels, the conv encoder and decoder: the paper's
setting), `reference_tiny_categorical.npz` (categorical latents: `dmc_state`, DreamerV2's own DMC preset) and
`reference_tiny_atari.npz` (the `atari` preset: grey pixels, categorical latents, one-hot actions learnt by
REINFORCE, the discount head) hold a tiny `tempo-official` run's parameters, a batch and noise
(`same_batch.py export-tiny [--pixels | --discrete 8 | --atari]`),
and what danijar/dreamerv2 (`same_batch.py reference`) and deng-ai-lab/TEMPO (`same_batch_tempo.py reference`)
computed from them with TF 2.15.1. After a change of what the export holds, regenerate it with the commands in
docs/evidence/reference/README.md ("The test fixtures"). Our side is rebuilt from the file alone and computed here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.test_recipe_tempo import ROOT

EVIDENCE = ROOT / "docs/evidence/reference"
FIXTURES = {"states": ROOT / "tests/fixtures/reference_tiny.npz",
            "pixels": ROOT / "tests/fixtures/reference_tiny_pixels.npz",
            "categorical": ROOT / "tests/fixtures/reference_tiny_categorical.npz",
            "atari": ROOT / "tests/fixtures/reference_tiny_atari.npz"}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, EVIDENCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # same_batch_tempo imports same_batch by name
    spec.loader.exec_module(module)
    return module


sb = _script("same_batch")
sbt = _script("same_batch_tempo")


@pytest.fixture(scope="module", params=list(FIXTURES))
def arrays(request: pytest.FixtureRequest) -> tuple[dict, dict, dict]:
    """(our inputs, the DreamerV2 reference's outputs, the official TEMPO code's outputs), per fixture."""
    data = dict(np.load(FIXTURES[request.param]))
    parts = ({k: v for k, v in data.items() if not k.startswith(("ref/", "tref/"))},
             {k[4:]: v for k, v in data.items() if k.startswith("ref/")},
             {k[5:]: v for k, v in data.items() if k.startswith("tref/")})
    assert all(parts)
    return parts


def _gradients(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "cos" in r and not r.get("both_zero")]


def _assert_same(rows: list[dict], tol: float = 1e-4) -> None:
    """Float32 rounding: every gradient parallel and of the same norm, every quantity within `tol` of the
    reference's largest magnitude."""
    grads = _gradients(rows)
    assert grads and all(r["cos"] > 1 - 1e-6 and abs(r["norm_ratio"] - 1) < tol for r in grads), \
        [(r["label"], r["quantity"], r["cos"], r["norm_ratio"]) for r in grads if r["cos"] <= 1 - 1e-6]
    worst = max(rows, key=lambda r: r["rel"] if not r.get("negligible") else 0.0)
    assert worst["rel"] < tol, worst


def test_dreamerv2_update_is_the_references(arrays):
    """World-model loss, imagination, λ-returns, actor and critic losses and all their gradients: danijar/dreamerv2's,
    with TensorFlow's action-sample gradient (`trunc_grad tf`)."""
    inp, ref, _ = arrays
    rows = sb.compare_update(inp, ref)
    _assert_same([r for r in rows if r["label"] != "actor-critic, trunc_grad exact"])
    assert {r["label"] for r in rows} == {"actor-critic, trunc_grad tf", "actor-critic, trunc_grad exact",
                                          "world model"}
    quantities = {r["quantity"] for r in rows}
    assert {"wm/loss", "actor_loss", "critic_loss", "critic_target", "grad/rssm/cell.layer.weight",
            "grad/actor/0.weight", "grad/critic/4.weight"} <= quantities


def test_the_comparison_tells_the_exact_action_gradient_from_the_references(arrays):
    """The same comparison on `trunc_grad exact` finds the actor's gradient another one, and nothing else: it can
    fail."""
    inp, ref, _ = arrays
    if json.loads(str(inp["meta"]))["discrete_actions"]:
        pytest.skip("one-hot actions: `trunc_grad` is the truncated normal's, which they do not use")
    rows = [r for r in sb.compare_update(inp, ref) if r["label"] == "actor-critic, trunc_grad exact"]
    actor = [r for r in _gradients(rows) if r["quantity"].startswith("grad/actor/")]
    assert actor and min(r["norm_ratio"] for r in actor) < 0.9
    _assert_same([r for r in rows if not r["quantity"].startswith("grad/actor/")])


def test_tempo_step_is_the_official_codes(arrays):
    """V-VAML, the weights, the weighted ELBO, ∇θ L_up, ∇θ L_low and the α-gradient of `sign official`: the
    official `WorldModel.train`'s, with the exact contractions; the run's finite-difference `terms_fd` close."""
    inp, _, tref = arrays
    rows = sbt.compare_step(inp, tref, ["double_backward", "jvp"])
    exact = [r for r in rows if not r["label"].startswith("ours, terms_fd")]
    _assert_same(exact)
    assert {"ours, double_backward", "ours, jvp"} <= {r["label"] for r in exact}
    fd = _gradients([r for r in rows if r["label"].startswith("ours, terms_fd") and "grad_alpha" in r["quantity"]])
    assert fd and all(r["cos"] > 0.999 and abs(r["norm_ratio"] - 1) < 0.1 for r in fd)  # a finite difference
    assert {"upper", "lower", "w", "grad_alpha/net.0.weight", "grad_upper/rssm/obs_out.0.weight"} <= {
        r["quantity"] for r in rows}


def test_the_correct_sign_is_the_official_alpha_gradient_negated(arrays):
    """`sign correct` (with the unit scale) applies -(∂²L_low/∂θ∂α)·∇θL_up: exactly the official direction
    reversed."""
    inp, _, tref = arrays
    meta = json.loads(str(inp["meta"]))
    with tempfile.TemporaryDirectory() as tmp:
        run = sb.make_run(inp, meta, Path(tmp), {"tempo": {"bilevel": {"sign": "correct",
                                                                       "contraction": "double_backward"}}})
        mine = sbt.ours(run, inp)
    negated = {k: -v for k, v in mine.items() if k.startswith("grad_alpha/")}
    _assert_same(sb.compare_rows(tref, negated, "sign correct, negated"))


@pytest.mark.parametrize("bias", [0.0, 0.3])
def test_noise_summary_measures_a_known_bias_and_spread(tmp_path, bias):
    """`same_batch_tempo.py noise-summary` on synthetic draws whose truth is known: shared = m + e, fresh = m + b + e'
    with ||b|| = bias·||m|| and tr Cov = 0.25·||m||² per mode. It must find bias² (relative to the fresh mean's
    squared norm) inside its CI, zero inside it when there is none, and the spread."""
    rng = np.random.default_rng(1)
    n, p = 32, 4000
    m = rng.standard_normal(p)
    b = bias * np.linalg.norm(m) * rng.standard_normal(p) / np.sqrt(p)
    noise = 0.5 * np.linalg.norm(m) / np.sqrt(p)  # per coordinate: tr Cov = 0.25 ||m||²
    shared = m + noise * rng.standard_normal((n, p))
    fresh = m + b + 0.6 * (shared - m) + 0.8 * noise * rng.standard_normal((n, p))  # paired: correlated draws
    arrays = {"shared/net.0.weight": shared[:, :3000].reshape(n, 30, 100), "shared/net.0.bias": shared[:, 3000:],
              "fresh/net.0.weight": fresh[:, :3000].reshape(n, 30, 100), "fresh/net.0.bias": fresh[:, 3000:]}
    arrays |= {f"{mode}/{k}": np.zeros(n) for mode in ("shared", "fresh") for k in ("upper", "lower")}
    np.savez(tmp_path / "noise.npz", **arrays)
    out = sbt.noise_summary(tmp_path / "noise.npz")
    a, ci = out["all"], out["ci95"]
    truth = (b @ b) / ((m + b) @ (m + b))
    assert ci["bias2_rel"][0] <= truth <= ci["bias2_rel"][1], (truth, a["bias2_rel"], ci["bias2_rel"])
    assert (ci["bias2_rel"][0] > 0) == (bias > 0)  # a bias of 0.3 of the mean's norm is found, none is not invented
    assert abs(a["spread_shared"] - 0.25) < 0.02  # relative to the sample mean's norm: 0.25 less 1/n of it
    assert out["draws"] == n and out["parameters"] == p
