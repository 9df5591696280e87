"""The rules of the house, checked on the code itself: small rooms, one Dice, one ray.init, methods own their options."""

from __future__ import annotations

import re
from pathlib import Path

from aide_ray.methods.registry import METHOD_NAMES

PACKAGE = Path(__file__).resolve().parents[1] / "aide_ray"
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _code(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_no_module_is_over_the_size_limit():
    big = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(_code(p).splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_one_ray_init():
    callers = [str(p.relative_to(PACKAGE)) for p in _modules() if re.search(r"\bray\.init\(", _code(p))]
    assert callers == ["distributed/runtime.py"], callers


def test_one_dice_implementation():
    # A Dice is 2 |A ∩ B| / (|A| + |B|): the "2.0 *" / "2 *" over a sum of sizes. The soft Dice *loss*
    # of nn/losses.py (a differentiable objective on probabilities) is a loss, not a second metric.
    pattern = re.compile(r"2(\.0)?\s*\*\s*[\w\[\]\.\(\)]*(inter|tp|&)", re.IGNORECASE)
    places = [str(p.relative_to(PACKAGE)) for p in _modules() if pattern.search(_code(p))]
    assert places == ["eval/dice.py", "nn/losses.py"], places


def test_no_method_options_read_outside_their_method():
    outside = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        for match in re.finditer(rf"\bcfg\.({'|'.join(sorted(METHOD_NAMES))})\b", _code(path)):
            outside.append(f"{rel}: {match.group(0)}")
    assert not outside, outside
    engine = "".join(_code(p) for p in (PACKAGE / "engine").glob("*.py"))
    assert "options_of(" not in engine and ".options." not in engine


def test_the_algorithm_never_imports_ray_or_the_engine():
    for room in ("nn", "methods", "labels", "eval", "inference", "data"):
        for path in (PACKAGE / room).rglob("*.py"):
            imports = "\n".join(line for line in _code(path).splitlines()
                                 if re.match(r"\s*(import|from) ", line))
            assert not re.search(r"^\s*(import ray|from ray)", imports, re.MULTILINE), path
            assert "aide_ray.distributed" not in imports and "aide_ray.engine" not in imports, path
