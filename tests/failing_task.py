"""Imported by a sweep's trials (`recipes.sweep ... --import tests.failing_task`): a run of task reacher_easy
raises before training, so tests can watch a sweep retry and report a failing trial (tests/test_sweep.py). Every
other run is untouched. A test harness, not part of the recipes."""

from recipes import tempo

_train = tempo.train


def _failing_train(cfg, *args, **kwargs):
    if cfg.env.task == "reacher_easy":
        raise RuntimeError("fault injected into a reacher_easy trial (tests/failing_task.py)")
    return _train(cfg, *args, **kwargs)


tempo.train = _failing_train
