"""`tempo.bilevel.concurrent_upper`: ∇θ L_up taken in a second thread while the lower backward runs gives the step the
sequential order gives, bit for bit, puts the intra-op thread count back, and re-raises what fails in its thread."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import build


def steps(mode: str, precision: str = "32", n: int = 2) -> tuple[list[dict], dict[str, torch.Tensor]]:
    bench = build("tiny", "approx-terms_fd", precision=precision)
    bench.run.trainer.cfg.concurrent_upper = mode
    torch.manual_seed(0)
    metrics = [bench.train_step() for _ in range(n)]
    state = {**bench.run.wm.state_dict(), **{f"w.{k}": v for k, v in bench.run.trainer.weighter.state_dict().items()}}
    return metrics, state


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_concurrent_upper_grad_is_the_sequential_one(precision, monkeypatch):
    from bilevel.trainer import BilevelTrainer

    both, calls = BilevelTrainer.both_grads, []
    monkeypatch.setattr(BilevelTrainer, "both_grads", lambda self, *a: calls.append(1) or both(self, *a))
    threads = torch.get_num_threads()
    (m_seq, s_seq), seq_calls = steps("off", precision), len(calls)
    m_con, s_con = steps("on", precision)
    assert (seq_calls, len(calls)) == (0, 2) and torch.get_num_threads() == threads
    keys = ("wm/lower_loss", "wm/upper_loss", "wm/grad_norm", "wm/hypergrad_norm", "agent/actor_loss")
    for a, b in zip(m_seq, m_con, strict=True):
        assert all(a[k] == b[k] for k in keys), {k: (a[k], b[k]) for k in keys}
    assert s_seq.keys() == s_con.keys() and all(torch.equal(s_seq[k], s_con[k]) for k in s_seq)


def test_auto_is_on_for_a_multithreaded_float32_cpu_only(monkeypatch):
    trainer = build("tiny", "approx-terms_fd").run.trainer
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert trainer.cfg.concurrent_upper == "auto" and trainer.concurrent_upper()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not trainer.concurrent_upper()
    assert not build("tiny", "approx-terms_fd", precision="bf16").run.trainer.concurrent_upper()


def test_a_failure_in_the_upper_thread_reaches_the_caller(monkeypatch):
    from bilevel.context import StepContext

    bench = build("tiny", "approx-terms_fd")
    bench.run.trainer.cfg.concurrent_upper = "on"

    def broken(self):
        raise RuntimeError("upper failed")

    monkeypatch.setattr(StepContext, "upper_grad", broken)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="upper failed"):
        bench.train_step()
    assert torch.get_num_threads() == threads
