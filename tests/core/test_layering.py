"""The package's imports run one way: the core and models/ import nothing from the layers above
them, generation imports only the core, checkpoints the core (and generation's options), and no
module imports the package's own ``__init__``. Every import is read from the source, including
imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "purevedec"
LAYERS = ("generation", "checkpoints", "captioning", "training", "shapes")  # the subpackages above the core


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool = False) -> set[str]:
    """The purevedec modules the source of module ``name`` imports (``from pkg import sub`` counts
    as importing ``pkg.sub`` when ``sub`` is a module, else as importing ``pkg`` itself)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "purevedec"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "purevedec":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
    return found


def layer_of(module: str) -> str:
    """"core" (the top-level modules and models/), or the subpackage's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


# Which layers each layer may import (besides itself); checkpoints may read generation's options.
ALLOWED = {
    "core": set(),
    "generation": {"core"},
    "checkpoints": {"core"},
    "captioning": {"core", "generation", "checkpoints"},
    "training": {"core", "generation", "checkpoints", "captioning"},
    "shapes": {"core", "generation", "checkpoints", "captioning", "training"},
}
EXCEPTIONS = {("checkpoints", "purevedec.generation.options")}
TOP = {"purevedec.commands", "purevedec.__main__"}  # the command line sits above every layer


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    name = _module_name(path)
    if name in TOP or name == "purevedec":
        return
    wrong = wrong_imports(name, imports_of(path))
    assert not wrong, f"{name} ({layer_of(name)} layer) imports {wrong}"


def wrong_imports(name: str, targets: set[str]) -> list[str]:
    mine = layer_of(name)
    wrong = []
    for target in targets:
        if target == "purevedec":
            wrong.append(f"{target} (the package's own __init__)")
            continue
        theirs = layer_of(target)
        if theirs != mine and theirs not in ALLOWED[mine] and (mine, target) not in EXCEPTIONS:
            wrong.append(f"{target} ({theirs} layer)")
    return wrong


def test_the_checker_sees_wrong_imports():
    """The check itself: a core module importing the checkpoint layer (even inside a function), a
    model family importing generation, and anything importing the package's ``__init__``."""
    core = imports_in("def f():\n    from .checkpoints import loader\n", "purevedec.config")
    assert wrong_imports("purevedec.config", core) == ["purevedec.checkpoints.loader (checkpoints layer)"]
    family = imports_in("from ..generation import search\n", "purevedec.models.vit")
    assert wrong_imports("purevedec.models.vit", family) == ["purevedec.generation.search (generation layer)"]
    assert wrong_imports("purevedec.training.cli", imports_in("import purevedec\n", "purevedec.training.cli"))
    assert not wrong_imports("purevedec.checkpoints.writer",
                             imports_in("from ..generation.options import FIELDS\n", "purevedec.checkpoints.writer"))
