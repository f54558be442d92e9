"""The one-way house: every import in ovss_cli points to the same room or a lower floor.

The floors are written once, here (docs/architecture.md explains them). A room may import
any room on a lower floor and nothing on its own floor or above; imports inside functions
count too, so a back-edge cannot hide from the drawing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ovss_cli"

# floor -> rooms (a room is a top-level module or subpackage of ovss_cli)
FLOORS = [
    {"__init__", "errors"},  # the version and the errors a user can act on
    {"textutil"},  # message wording: close-match suggestions, one-line error summaries
    {"fileio", "progress", "config"},  # atomic files, progress display, the strict dataclass <-> dict converter
    {"runtime"},  # distributed launch, precision, seeding, checkpoint files
    {"data", "clip"},  # datasets and benchmarks; open_clip loading, dense features, prompts
    {"prepare", "peft", "decoder", "losses"},  # converters; adapters; CAT-Seg decoder; loss maths
    {"wsss"},  # CLIP-ES / VPL algorithms on frozen CLIP
    {"methods"},  # one module per method: model + loss
    {"evaluate"},  # metrics, sliding window, scoring loops
    {"engine"},  # the training loop, data loading, runs, the pseudo-label loop
    {"perf"},  # cost models and the measurements behind `ovss benchmark`
    {"recipes"},  # the recipe schema: composes every room's config section
    {"loading"},  # trained models from checkpoints and export folders
    {"export", "convert"},  # plain open_clip / ONNX out; official checkpoints in
    {"commands"},  # one thin module per command
    {"cli"},  # the Typer app
    {"__main__"},  # python -m ovss_cli
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every ovss_cli import in `path`, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if target == "ovss_cli":  # `from ovss_cli import x`: x is a room (or the package's own names)
                found += [(node.lineno, f"ovss_cli.{alias.name}") if (PACKAGE / alias.name).exists()
                          or (PACKAGE / f"{alias.name}.py").exists() else (node.lineno, target)
                          for alias in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "ovss_cli" or name.startswith("ovss_cli.")]


def upward_edges() -> list[str]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _room(_module_name(path))
        for line, target in _imported_modules(path):
            room = _room(target)
            if room != source and FLOOR[room] >= FLOOR[source]:
                edges.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source} (floor {FLOOR[source]}) "
                             f"imports {target} (floor {FLOOR[room]})")
    return edges


def test_every_room_has_a_floor():
    rooms = {_room(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert rooms - set(FLOOR) == set(), "add new rooms to FLOORS (and docs/architecture.md)"


def test_no_import_points_up_or_sideways():
    assert upward_edges() == []


def test_the_checker_sees_upward_and_relative_imports(tmp_path, monkeypatch):
    # a method importing the engine, inside a function and through a relative import, is caught
    fake = tmp_path / "ovss_cli"
    (fake / "methods").mkdir(parents=True)
    (fake / "engine").mkdir()
    (fake / "methods" / "__init__.py").write_text("")
    (fake / "engine" / "__init__.py").write_text("")
    (fake / "engine" / "trainer.py").write_text("")
    (fake / "methods" / "bad.py").write_text("def f():\n    from ..engine import trainer\n")
    (fake / "methods" / "good.py").write_text("from ovss_cli.methods import bad\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges = upward_edges()
    assert len(edges) == 1 and "methods/bad.py:2" in edges[0] and "ovss_cli.engine" in edges[0]
