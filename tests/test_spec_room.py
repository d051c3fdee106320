"""The run spec's room (`oneseekd/spec/`) is read by intake, `oneseekctl` and the trainer, so it
imports nothing from the rest of oneseekd and no heavy library, and its modules import each
other one way only (issue 25: runspec and runcheck imported each other, and the field types
were imported from a floor above)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import oneseekd.spec

ROOM = Path(oneseekd.spec.__file__).parent
HEAVY = {"torch", "transformers", "peft", "sqlalchemy", "bitsandbytes", "numpy"}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_spec_room_imports_only_itself_from_oneseekd_and_nothing_heavy() -> None:
    for path in sorted(ROOM.glob("*.py")):
        for name in imports(path):
            if name.startswith("oneseekd"):
                assert name.startswith("oneseekd.spec"), f"{path.name} imports {name}"
            assert name.split(".")[0] not in HEAVY, f"{path.name} imports {name}"


def test_the_spec_modules_import_each_other_one_way() -> None:
    edges = {
        path.stem: {
            n.split(".")[2]
            for n in imports(path)
            if n.startswith("oneseekd.spec.") and n.count(".") >= 2
        }
        - {path.stem}
        for path in ROOM.glob("*.py")
    }
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        assert seen.get(module) != 1, "an import circle: " + " -> ".join([*path, module])
        if seen.get(module) == 2:
            return
        seen[module] = 1
        for target in sorted(edges.get(module, set())):
            visit(target, [*path, module])
        seen[module] = 2

    for module in sorted(edges):
        visit(module, [])


def test_the_spec_imports_alone_without_the_rest_of_oneseekd() -> None:
    code = (
        "import sys\n"
        "import oneseekd.spec.request, oneseekd.spec.host, oneseekd.spec.plan\n"
        "others = sorted(m for m in sys.modules if m.startswith('oneseekd.')"
        " and not m.startswith('oneseekd.spec'))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in"
        f" {sorted(HEAVY)!r})\n"
        "print(others, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
