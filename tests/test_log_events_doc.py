"""docs/operations.md lists every log event oneseekd writes (issue 30): each event name in the
code, found by reading its log calls, is in the document, so a new event cannot go
undocumented."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# names composed at run time, each with the code that composes it
COMPOSED = {
    # catalog/live.py: "model_" + a catalog change (catalog/store.py)
    "model_added": "added",
    "model_state_changed": "state_changed",
    "model_moved": "moved",
    "model_missing": "missing",
    "model_returned": "returned",
    # intake/incoming.py: "request_" + the verdict
    "request_rejected": "rejected",
    "request_duplicate": "duplicate",
    # daemon/launch.py writes the run log's first line itself
    "trainer_started": "trainer_started",
}


def logged_events(root: Path) -> dict[str, set[str]]:
    """{event: files} for every structlog call with a literal event name under `root`:
    log.info("x", ...), and log.log(level, "x", ...)."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            args = node.args[1:] if node.func.attr == "log" else node.args
            if node.func.attr not in LEVELS | {"log"} or not args:
                continue
            first = args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = first.value
                if name.replace("_", "").isalpha() and name.islower():
                    found.setdefault(name, set()).add(str(path.relative_to(root.parent)))
    return found


def composed_parts_exist() -> list[str]:
    """Each composed name's part is still in the code that composes it."""
    code = "".join(
        (ROOT / "oneseekd" / p).read_text(encoding="utf-8")
        for p in ("catalog/store.py", "intake/incoming.py", "daemon/launch.py")
    )
    return [name for name, part in COMPOSED.items() if f'"{part}"' not in code]


def test_every_event_the_code_logs_is_in_operations_md() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    events = set(logged_events(ROOT / "oneseekd")) | set(COMPOSED)
    missing = sorted(e for e in events if f"`{e}`" not in text)
    assert missing == [], f"docs/operations.md does not list {missing}"
    assert composed_parts_exist() == []
    assert "journalctl -u oneseekd -o cat | jq" in text


def test_the_check_finds_an_event_the_code_logs(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        'log.info("run_started", a=1)\nlog.log(30, "library_log")\nlog.error(name)\n'
        'print("not_an_event")\n'
    )
    assert set(logged_events(package)) == {"run_started", "library_log"}
    # today's events the issue named as missing are found
    found = logged_events(ROOT / "oneseekd")
    assert {"ledger_tip", "ledger_key_pinned", "current_moved"} <= set(found)
