"""`tempo.bilevel.concurrent_upper`: ∇θ L_up taken in a second thread while the lower backward runs gives the step the
sequential order gives, bit for bit, puts the intra-op thread count back, and re-raises what fails in its thread."""

from __future__ import annotations

import threading

import pytest
import torch

from benchmarks.common import build


def steps(mode: str, precision: str = "32", n: int = 2, hypergrad: str = "32"
          ) -> tuple[list[dict], dict[str, torch.Tensor]]:
    bench = build("tiny", "approx-terms_fd", precision=precision)
    bench.run.trainer.cfg.concurrent_upper = mode
    bench.run.trainer.cfg.hypergrad_precision = hypergrad
    torch.manual_seed(0)
    metrics = [bench.train_step() for _ in range(n)]
    state = {**bench.run.wm.state_dict(), **{f"w.{k}": v for k, v in bench.run.trainer.weighter.state_dict().items()}}
    return metrics, state


@pytest.mark.parametrize(("precision", "hypergrad"), [("32", "32"), ("bf16", "32"), ("bf16", "step")])
def test_concurrent_upper_grad_is_the_sequential_one(precision, hypergrad, monkeypatch):
    """...and terms_fd's float32 passes run in the upper-grad thread (`Contraction.prepare`), once per step. At one
    intra-op thread, which that thread's passes run on (a matmul's rounding may depend on the thread count: with
    ∇θ L_up from the bf16 graph, the last bit of the α-gradient's norm did on 2 threads)."""
    from bilevel.contractions import TermsFd
    from bilevel.trainer import BilevelTrainer

    both, calls = BilevelTrainer.both_grads, []
    monkeypatch.setattr(BilevelTrainer, "both_grads", lambda self, *a: calls.append(1) or both(self, *a))
    from bilevel.context import StepContext

    shift, shifts = TermsFd._shift, []
    monkeypatch.setattr(TermsFd, "_shift", staticmethod(
        lambda *a: shifts.append(threading.current_thread().name) or shift(*a)))
    base, bases = StepContext.float32_context, []
    monkeypatch.setattr(StepContext, "float32_context", lambda sc, graph=False: (
        bases.append(threading.current_thread().name) if sc.cache.upper_ctx is None else None) or base(sc, graph))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (m_seq, s_seq), seq_calls = steps("off", precision, hypergrad=hypergrad), len(calls)
        assert shifts == ["MainThread"] * 2 and bases == ["MainThread"] * 2 * (precision == "bf16")
        m_con, s_con = steps("on", precision, hypergrad=hypergrad)
        assert (seq_calls, len(calls)) == (0, 2) and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert shifts[2:] == ["upper-grad"] * 2 and bases[len(bases) // 2:] == ["upper-grad"] * (len(bases) // 2)
    keys = ("wm/lower_loss", "wm/upper_loss", "wm/grad_norm", "wm/hypergrad_norm", "agent/actor_loss")
    for a, b in zip(m_seq, m_con, strict=True):
        assert all(a[k] == b[k] for k in keys), {k: (a[k], b[k]) for k in keys}
    assert s_seq.keys() == s_con.keys() and all(torch.equal(s_seq[k], s_con[k]) for k in s_seq)


def test_auto_is_on_for_a_multithreaded_cpu_reading_the_upper_gradient_from_the_pass(monkeypatch):
    trainer = build("tiny", "approx-terms_fd").run.trainer
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert trainer.cfg.concurrent_upper == "auto" and trainer.concurrent_upper()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not trainer.concurrent_upper()
    bf16 = build("tiny", "approx-terms_fd", precision="bf16").run.trainer
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not bf16.concurrent_upper()  # a float32 upper pass of its own: measured slower beside the lower one
    bf16.cfg.hypergrad_precision = "step"
    assert bf16.concurrent_upper()


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


def test_the_lower_gradient_is_taken_of_the_steps_own_parameters_while_the_other_thread_reparametrises(monkeypatch):
    """The upper-grad thread's re-evaluations swap the module's parameters (`torch.func.functional_call`) for the
    duration of a pass; the lower gradient taken meanwhile must still be of θ as the step began (it once read the
    module's attributes mid-swap: 'One of the differentiated Tensors does not require grad')."""
    from torch.nn.utils.stateless import _reparametrize_module

    from bilevel.context import StepContext

    bench = build("tiny", "approx-terms_fd")
    bench.run.trainer.cfg.concurrent_upper = "on"
    entered, lower_done = threading.Event(), threading.Event()
    upper_grad, lower_grad = StepContext.upper_grad, StepContext.lower_grad

    def upper_while_swapped(sc):
        model = sc.problem.model
        shifted = {n: p.detach() + 1.0 for n, p in model.named_parameters()}
        with _reparametrize_module(model, shifted):
            entered.set()
            assert lower_done.wait(30)
        return upper_grad(sc)

    def lower_meanwhile(sc, *a, **k):
        assert entered.wait(30)
        try:
            return lower_grad(sc, *a, **k)
        finally:
            lower_done.set()

    monkeypatch.setattr(StepContext, "upper_grad", upper_while_swapped)
    monkeypatch.setattr(StepContext, "lower_grad", lower_meanwhile)
    torch.manual_seed(0)
    got = bench.train_step()
    monkeypatch.undo()
    ref = build("tiny", "approx-terms_fd")
    ref.run.trainer.cfg.concurrent_upper = "off"
    torch.manual_seed(0)
    want = ref.train_step()
    assert got["wm/grad_norm"] == want["wm/grad_norm"] and got["wm/hypergrad_norm"] == want["wm/hypergrad_norm"]
