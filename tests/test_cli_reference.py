"""The command line a newcomer meets: run directories named after the run, --print-config, --import of plug-ins
(also through a sweep), --help with defaults, and a configuration reference that cannot go stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_recipe_tempo import ROOT

PLUGIN = '''
import torch
from losses import UpperLoss, register


@register("abs_value_gap")
class AbsValueGap(UpperLoss):
    """|V(post) - V(prior)|: V-VAML with an absolute instead of a squared gap."""

    def per_sample(self, h, s_post, s_prior, value_fn):
        return self.values_loss(*self.values(h, s_post, s_prior, value_fn))

    def values_loss(self, v_post, v_prior):
        return (v_post - v_prior).abs()
'''


CONTRACTION = '''
from pathlib import Path

from bilevel.contractions import CONTRACTIONS, TermsFd


@CONTRACTIONS.register
class CountedTermsFd(TermsFd):
    """terms_fd that leaves a mark each time it contracts (so a test sees it ran)."""

    name = "counted_terms_fd"

    def __call__(self, sc, v):
        with open(Path(__file__).with_suffix(".calls"), "a") as f:
            f.write("1")
        return super().__call__(sc, v)
'''


def cli(args: list[str], cwd: Path, extra_path: Path | None = None, module: str = "recipes.tempo",
        timeout: float = 300) -> subprocess.CompletedProcess:
    path = os.pathsep.join(str(p) for p in (ROOT, extra_path) if p is not None)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_runs_land_in_directories_named_after_them(tmp_path):
    """TEMPO and then DreamerV2 on one task, without --logdir: two run directories side by side, as a sweep lays
    them out (the second is not refused as 'a run made with other settings')."""
    for weighting, method in [("meta", "tempo"), ("none", "dreamerv2")]:
        p = cli(["--task", "cartpole_swingup", "--preset", "debug", "--steps", "150", "--weighting", weighting,
                 "--run.video_every", "0"], tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        assert json.loads(p.stdout.splitlines()[-1])["logdir"] == f"runs/cartpole_swingup/{method}/0"
        assert (tmp_path / "runs" / "cartpole_swingup" / method / "0" / "checkpoint.pt").exists()
    p = cli(["--task", "gym:Pendulum-v1", "--preset", "debug", "--seed", "3", "--print-config"], tmp_path)
    assert json.loads(p.stdout)["run"]["logdir"] == "runs/gym_Pendulum-v1/tempo/3"


def test_print_config_shows_what_a_command_resolves_to_and_writes_nothing(tmp_path):
    p = cli(["--task", "walker_walk", "--preset", "dmc_small", "--sign", "official", "--world_model.lr", "1e-4",
             "--print-config"], tmp_path)
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)
    assert (cfg["preset"], cfg["method"], cfg["env"]["task"]) == ("dmc_small", "tempo-official", "walker_walk")
    assert cfg["world_model"]["lr"] == 1e-4 and cfg["world_model"]["units"] == 200  # override over preset
    assert list(tmp_path.iterdir()) == []  # nothing written
    # a run directory that holds a run: the configuration a resume would use, with the safe change asked for
    logdir = tmp_path / "run"
    assert cli(["--task", "cartpole_swingup", "--preset", "debug", "--steps", "150", "--logdir", str(logdir),
                "--run.video_every", "0"], tmp_path).returncode == 0
    before = sorted(p.name for p in logdir.rglob("*"))
    p = cli(["--logdir", str(logdir), "--steps", "300", "--print-config"], tmp_path)
    cfg = json.loads(p.stdout)
    assert (cfg["preset"], cfg["env"]["task"], cfg["run"]["steps"]) == ("debug", "cartpole_swingup", 300)
    assert sorted(p.name for p in logdir.rglob("*")) == before
    p = cli(["--logdir", str(logdir), "--world_model.deter", "8", "--print-config"], tmp_path)
    assert p.returncode == 2 and "holds a run made with other settings" in p.stderr


def test_an_upper_loss_plugged_in_from_the_command_line(tmp_path):
    """A user's module registers an upper loss; `--import` makes its name valid for a run and for every trial of
    a sweep (the recipe validates names before anything is written, so without the import it is refused)."""
    (tmp_path / "myplug.py").write_text(PLUGIN)
    args = ["--task", "cartpole_swingup", "--preset", "debug", "--steps", "150", "--run.video_every", "0",
            "--upper-loss", "abs_value_gap"]
    p = cli([*args, "--logdir", str(tmp_path / "no")], ROOT, tmp_path)
    assert p.returncode == 2 and "abs_value_gap" in p.stderr and not (tmp_path / "no").exists()
    p = cli([*args, "--import", "myplug", "--logdir", str(tmp_path / "run")], ROOT, tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["tempo"]["upper_loss"] == "abs_value_gap"
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("wm/upper_loss" in r for r in recs)
    p = cli(["--import", "nosuch_module_here"], ROOT)
    assert p.returncode == 2 and p.stderr.strip() == ("error: --import nosuch_module_here: ModuleNotFoundError: No "
                                                      "module named 'nosuch_module_here'")
    # a sweep passes it to every trial (validated in the driver, so it imports there too)
    from recipes.sweep import Spec, Trial, trial_argv

    spec = Spec(tasks=["cartpole_swingup"], methods=["tempo"], seeds=[0], imports=["myplug"])
    argv = trial_argv(spec, Trial("cartpole_swingup", "tempo", 0, (), str(tmp_path / "t")))
    assert argv[argv.index("--import") + 1] == "myplug"


def test_help_shows_defaults_and_presets():
    p = cli(["--help"], ROOT)
    text = " ".join(p.stdout.split())
    assert "(default 1000000; atari 10000000, debug 300)" in text  # --steps
    assert "(default terms_fd)" in text and "(default correct)" in text and "DSV | SV | S | DS | DV | D | V" in text
    assert "docs/CONFIG.md" in text


def test_the_configuration_reference_is_current():
    from recipes.config import Config
    from recipes.configdoc import leaves, render

    page = (ROOT / "docs" / "CONFIG.md").read_text()
    assert page == render(), "docs/CONFIG.md is stale: python -m recipes.configdoc > docs/CONFIG.md"
    for dotted, _ in leaves(Config):
        assert dotted == "preset" or f"| `{dotted}` |" in page
    assert "| `run.steps` | int | `1000000` | atari: `10000000`; debug: `300` | environment frames |" in page


def test_a_contraction_plugged_in_from_the_command_line(tmp_path):
    (tmp_path / "mycontraction.py").write_text(CONTRACTION)
    args = ["--task", "cartpole_swingup", "--preset", "debug", "--steps", "150", "--run.video_every", "0",
            "--contraction", "counted_terms_fd", "--logdir", str(tmp_path / "run")]
    p = cli(args, ROOT, tmp_path)
    assert p.returncode == 2 and "counted_terms_fd" in p.stderr and not (tmp_path / "run").exists()
    p = cli([*args, "--import", "mycontraction"], ROOT, tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    updates = json.loads(p.stdout.splitlines()[-1])["updates"]
    assert len((tmp_path / "mycontraction.calls").read_text()) == updates  # one contraction per α step
