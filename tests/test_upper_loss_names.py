"""`check_upper_loss` (cheap validation of an upper-loss name or path) and the import layering of losses/:
base <- registry <- upper, with no function-level imports between them."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from torch import Tensor

import losses
from losses import UpperLoss, check_upper_loss, registered
from losses.base import UpperLoss as BaseUpperLoss
from losses.upper import NORMS, VVAML, ValueNorm, evaluate_value

NOT_CALLABLE = 3


class GoodLoss(UpperLoss):
    def per_sample(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn) -> Tensor:
        return (s_post - s_prior).square().sum(-1)


def one_line_error(value: object) -> str:
    with pytest.raises(ValueError) as info:
        check_upper_loss(value)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg
    assert str(registered()) in msg  # names the registered losses
    return msg


def test_valid_names_and_paths_are_returned_unchanged() -> None:
    assert check_upper_loss("vvaml") == "vvaml"
    assert check_upper_loss("VaGraM") == "VaGraM"  # names are case-insensitive
    assert check_upper_loss("tests.test_upper_loss_names:GoodLoss") == "tests.test_upper_loss_names:GoodLoss"


def test_unknown_name() -> None:
    msg = one_line_error("nope")
    assert "'nope'" in msg and re.search(r"\['vagram', 'vvaml'", msg)


@pytest.mark.parametrize("value, needle", [
    ("no_such_module_xyz:Loss", "no_such_module_xyz"),
    ("tests.test_upper_loss_names:Missing", "no attribute 'Missing'"),
    (":GoodLoss", "module.path:ClassName"),
    ("tests.test_upper_loss_names:", "module.path:ClassName"),
    ("tests.test_upper_loss_names:NOT_CALLABLE", "non-callable int"),
    (None, "None"),
])
def test_unresolvable_values(value: object, needle: str) -> None:
    msg = one_line_error(value)
    assert needle in msg and repr(value) in msg


def test_module_failing_at_import_gives_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dedupe_broken_loss.py").write_text('raise RuntimeError("first line\\nsecond line")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = one_line_error("dedupe_broken_loss:Loss")
    assert "RuntimeError" in msg and "first line second line" in msg
    sys.modules.pop("dedupe_broken_loss", None)


def test_public_names_importable_from_before() -> None:
    assert UpperLoss is BaseUpperLoss and issubclass(VVAML, BaseUpperLoss)
    assert losses.ValueNorm is ValueNorm and losses.evaluate_value is evaluate_value
    assert NORMS == ("batch", "moving", "none")
    for name in ("VVAML", "UpperLoss", "VaGraM", "ValueNorm", "evaluate_value", "get_upper_loss", "register",
                 "registered", "upper_loss_class", "check_upper_loss"):
        assert name in losses.__all__ and hasattr(losses, name)


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported at module level, modules imported inside functions) of a source file."""
    tree = ast.parse(path.read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    inner = {n.module for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.ImportFrom) and n.module}
    return top, inner


def test_import_layering_base_registry_upper() -> None:
    root = Path(losses.__file__).parent
    base, registry, upper = (imports(root / f"{m}.py") for m in ("base", "registry", "upper"))
    assert not {m for m in base[0] | base[1] if m.startswith("losses")}
    assert "losses.base" in registry[0] and "losses.upper" not in registry[0] | registry[1]
    assert {"losses.base", "losses.registry"} <= upper[0]
    assert not any(m.startswith("losses") for m in registry[1] | upper[1])
