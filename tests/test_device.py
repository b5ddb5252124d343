"""The framework on the device the suite is pointed at: `python -m pytest tests/test_device.py --device cuda` on a
GPU machine (the `--device` option of tests/conftest.py; default cpu, so CI runs these on its CPU too).

Checks that must hold on any device: a whole TEMPO and DreamerV2 run of the recipe, an update on the device equal
to the same update on the CPU (float32, within the rounding of other kernels), and every precision the device
runs natively."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.common import build as build_bench
from bilevel.precision import native_bf16
from recipes.config import build
from recipes.run import Run
from tests.test_recipe_tempo import records, run_cli


@pytest.mark.parametrize("weighting", ["meta", "none"], ids=["tempo", "dreamerv2"])
def test_a_whole_run_on_the_device(tmp_path, device, weighting):
    logdir = tmp_path / "run"
    p = run_cli(["--task", "cartpole_swingup", "--preset", "debug", "--device", device, "--weighting", weighting,
                 "--logdir", str(logdir), "--run.video_every", "0"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((logdir / "config.json").read_text())["run"]["device"] == device
    last = [r for r in records(logdir) if "wm/lower_loss" in r][-1]
    assert np.isfinite(last["wm/lower_loss"]) and np.isfinite(last["agent/actor_loss"])


def small_run(device: str, precision: str = "32") -> Run:
    cfg = build("debug", {"env": {"task": "cartpole_swingup"},
                          "run": {"device": device, "precision": precision, "world_model_precision": precision,
                                  "video_every": 0}})
    return Run(cfg, Path(tempfile.mkdtemp()))


def fake_batch(run: Run, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    T, B, D = run.cfg.replay.length, run.cfg.replay.batch, run.env.obs_space["state"][0]
    batch = {"state": rng.normal(size=(B, T, D)).astype(np.float32),
             "action": rng.uniform(-1, 1, (B, T, run.env.action_dim)).astype(np.float32),
             "reward": rng.normal(size=(B, T)).astype(np.float32),
             "is_first": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool)}
    batch["is_first"][:, 0] = True
    return run.to_torch(batch)


def test_an_update_on_the_device_is_the_cpu_update(device, monkeypatch):
    """Same parameters, batch and sampling noise (drawn by the CPU generator for both, since a CUDA generator draws
    other numbers): TEMPO's bilevel world-model step moves θ and α on the device as on the CPU, up to the float32
    rounding of other kernels; the actor-critic step after it is finite."""
    monkeypatch.setattr(torch, "randn_like", lambda x, **kw: torch.randn(x.shape, dtype=x.dtype).to(x.device))
    cpu, dev = small_run("cpu"), small_run(device)
    dev.wm.load_state_dict(cpu.wm.state_dict())
    dev.agent.restore(copy.deepcopy(cpu.agent.checkpoint()))
    dev.trainer.load_state_dict(copy.deepcopy(cpu.trainer.state_dict()))
    for run in (cpu, dev):
        torch.manual_seed(3)
        run.update(fake_batch(run))
    # the step's losses and gradient norms: sensitive to any difference in the pass, unlike Adam's first step
    for key in ("wm/lower_loss", "wm/upper_loss", "wm/grad_norm", "wm/hypergrad_norm", "wm/weight_std", "wm/kl"):
        assert dev.pending[key] == pytest.approx(cpu.pending[key], rel=1e-3), key
    for a, b in [(cpu.wm, dev.wm), (cpu.trainer.weighter, dev.trainer.weighter)]:
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(q.cpu(), p, rtol=1e-3, atol=2.5 * cpu.cfg.world_model.lr, msg=name)
    assert all(torch.isfinite(p).all() for p in dev.agent.parameters())
    assert dev.trainer.nonfinite == 0 and dev.nonfinite_agent == 0


def test_compiled_imagination_on_the_device_is_the_eager_one(device):
    """`run.compile` where it may pay most, a GPU (fewer kernel launches): the whole update with the compiled
    actor-critic losses equals the eager one on the same device. The CPU's case is tests/test_compile.py."""
    if device == "cpu":
        pytest.skip("tests/test_compile.py covers the CPU")
    eager, comp = build_bench("tiny", "none", device), build_bench("tiny", "none", device, compile=True)
    assert comp.wm.rssm.compile_imagination and not eager.wm.rssm.compile_imagination
    assert comp.agent.compile_losses and not eager.agent.compile_losses
    metrics = []
    for arm in (eager, comp):
        torch.manual_seed(3)
        metrics.append(arm.train_step())
    for k in ("agent/actor_loss", "agent/critic_loss"):
        assert np.isfinite(metrics[0][k]) and metrics[1][k] == pytest.approx(metrics[0][k], rel=1e-4, abs=1e-6), k
    for p, q in zip(eager.agent.parameters(), comp.agent.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_reduced_precision_updates_where_the_device_has_it(device, precision):
    """bfloat16 has float32's range: no update is skipped. float16's dynamic loss scaling starts at 2^15 and halves
    on each overflow, skipping that update (Keras's, as in DreamerV2): every skip is one halving, and once the scale
    fits the updates apply. (On the H200 the first version of this test, which allowed no skip, saw one.)"""
    if precision == "bf16" and not native_bf16(device):
        pytest.skip(f"no native bf16 on {device}")
    run = small_run(device, precision)
    scaler = run.trainer.updater.scaler
    assert (scaler is not None) == (precision == "16")
    scale0 = scaler.get_scale() if scaler else None
    skipped = []
    for i in range(6):
        before = [p.detach().clone() for p in run.wm.parameters()]
        run.update(fake_batch(run, seed=i))
        skipped.append(run.trainer.nonfinite)
    assert skipped[-1] == skipped[2] <= 2, skipped  # the skips are the scale's first back-offs, then none
    assert any(not torch.equal(a, b) for a, b in zip(before, run.wm.parameters(), strict=True))  # the last applied
    if scaler is None:
        assert skipped[-1] == 0
    else:  # growth waits 2000 finite steps, so the scale moved only by the skips' halvings
        assert scaler.get_scale() == scale0 * 0.5 ** skipped[-1]
    assert run.nonfinite_agent == 0
    assert all(torch.isfinite(p).all() for p in run.wm.parameters())
