"""The noisy-label recipe: a second, non-world-model instance of the bilevel framework.

Thresholds were set from measured values (40 epochs, noise 0.4, approx / double_backward, CPU):

    seed   uniform acc   meta acc   AUC(clean vs corrupted weights)
    0      0.902         0.956      0.993
    1      0.902         0.933      0.981
    2      0.889         0.933      0.984
    (seeds 3, 4: 0.939 -> 0.963, AUC 0.990;  0.919 -> 0.946, AUC 0.972)

i.e. a mean accuracy gain of ~0.043 and AUC >= 0.97; the tests ask for a gain > 0.015 on average and
AUC > 0.85 on every seed, leaving a wide margin for platform-level numeric differences.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recipes.noisy_labels import corrupt_labels, load_data, run

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
EPOCHS = 40


@pytest.fixture(scope="module")
def approx_runs() -> dict[int, dict]:
    return {seed: run(noise=0.4, seed=seed, epochs=EPOCHS, strategy="approx") for seed in SEEDS}


# ---- data -------------------------------------------------------------------------------------------
def test_symmetric_noise_flips_to_other_classes_uniformly():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=20000)
    noisy, corrupted = corrupt_labels(y, 0.4, rng)
    assert abs(corrupted.mean() - 0.4) < 0.02
    assert np.all(noisy[corrupted] != y[corrupted])  # a corrupted label is never the true one
    assert np.all(noisy[~corrupted] == y[~corrupted])
    offsets = (noisy[corrupted] - y[corrupted]) % 10  # uniform over the other 9 classes
    counts = np.bincount(offsets, minlength=10)
    assert counts[0] == 0
    assert counts[1:].min() > 0.8 * counts[1:].mean()


def test_split_is_stratified_clean_meta_and_seeded():
    d = load_data(noise=0.4, seed=3, meta_per_class=10)
    assert np.bincount(d["y_meta"].numpy(), minlength=10).tolist() == [10] * 10
    corrupted = d["corrupted"].numpy()
    y, y_true = d["y_train"].numpy(), d["y_train_true"].numpy()
    assert np.array_equal(y != y_true, corrupted)
    assert 0.35 < corrupted.mean() < 0.45
    n = len(y) + len(d["y_meta"]) + len(d["y_test"])
    assert n == 1797
    assert abs(float(d["x_train"].mean())) < 1e-4  # standardised with training statistics
    again = load_data(noise=0.4, seed=3, meta_per_class=10)
    assert np.array_equal(again["y_train"].numpy(), y)


# ---- the claims -------------------------------------------------------------------------------------
def test_meta_weighting_beats_uniform_on_clean_test_accuracy(approx_runs):
    uni = np.array([approx_runs[s]["uniform_test_acc"] for s in SEEDS])
    meta = np.array([approx_runs[s]["meta_test_acc"] for s in SEEDS])
    assert (meta - uni).mean() > 0.015, (uni, meta)
    assert (meta > uni).sum() >= 2, (uni, meta)


def test_corrupted_samples_get_lower_weights(approx_runs):
    for seed in SEEDS:
        r = approx_runs[seed]
        assert r["weight_auc_clean_vs_noisy"] > 0.85, (seed, r)
        assert r["mean_weight_noisy"] < 0.5 * r["mean_weight_clean"], (seed, r)


@pytest.mark.parametrize("strategy", ["unroll", "implicit"])
def test_other_strategies_also_reweight(strategy, approx_runs):
    r = run(noise=0.4, seed=0, epochs=EPOCHS, strategy=strategy)
    # same init and minibatch order: the uniform model does not depend on the meta strategy
    assert r["uniform_test_acc"] == approx_runs[0]["uniform_test_acc"]
    assert r["weight_auc_clean_vs_noisy"] > 0.85, r
    assert r["meta_test_acc"] > r["uniform_test_acc"], r


@pytest.mark.parametrize("kwargs,needle", [
    ({"noise": 1.0}, "noise must be in [0, 1), got 1.0"),
    ({"noise": -0.1}, "noise must be in [0, 1)"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"strategy": "none"}, "strategy must be one of"),
    ({"strategy": "unroll", "contraction": "jvp"}, "does not support contraction 'jvp'"),
])
def test_run_rejects_bad_inputs(kwargs, needle):
    with pytest.raises(ValueError) as e:
        run(**kwargs)
    assert needle in str(e.value)


# ---- CLI --------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipes.noisy_labels", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_json_last_line():
    p = _cli("--noise", "0.4", "--seed", "0", "--epochs", "2", "--log-every", "1")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert any(line.startswith("progress ") for line in lines[:-1])
    out = json.loads(lines[-1])
    for key in ("uniform_test_acc", "meta_test_acc", "weight_auc_clean_vs_noisy", "seconds", "noise", "seed",
                "strategy"):
        assert key in out, key
    assert out["noise"] == 0.4 and out["seed"] == 0 and out["strategy"] == "approx"
    assert 0.0 <= out["weight_auc_clean_vs_noisy"] <= 1.0


def test_cli_rejects_out_of_range_noise():
    p = _cli("--noise", "1.5")
    assert p.returncode != 0
    assert "1.5" in p.stderr and "[0, 1)" in p.stderr, p.stderr
    assert "progress" not in p.stdout  # rejected before any work
