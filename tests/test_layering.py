"""The import arrows of the README's "where things live" map, read from the source.

Every `import`/`from ... import` of every module under agent/ and tui/ (also inside
functions) is checked against the table below, so the layout stays true as code moves:
`tui` sees only the client side of the agent, nothing in `agent` imports `tui`, stages never
import the lab or the demo, the datapath (the lowest stage) imports no later stage, and only
agent/datapath/loader.py imports bcc.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The base layer: shared by every stage, every client and the TUI.
BASE = ("agent.errors", "agent.wire", "agent.filters")
# The stages of the agent, in data-flow order (README). Each may import the base, itself,
# agent.stats/agent.config/agent.stage and any stage BEFORE it; never one after it.
STAGES = ("agent.datapath", "agent.annotate", "agent.enrich", "agent.policy",
          "agent.flowstore", "agent.observer", "agent.export")
COMMON = BASE + ("agent.stats", "agent.config", "agent.stage", "agent.version")

# package (or module) prefix -> agent/tui prefixes it may import (besides itself).
ALLOWED: dict[str, tuple[str, ...]] = {
    "agent.errors": (),
    "agent.wire": ("agent.errors",),
    "agent.filters": ("agent.errors", "agent.wire"),
    "agent.stats": ("agent.errors",),
    "agent.stage": ("agent.errors",),
    "agent.config": COMMON + STAGES,  # builds each stage's section and flags
    **{stage: COMMON + STAGES[:i] for i, stage in enumerate(STAGES)},
    # the client side: what `podflow observe/status/policy` and the TUI build on
    "agent.client": BASE + ("agent.version", "agent.policy"),
    "agent.lab": ("agent.errors",),
    "agent.demo": BASE + ("agent.client", "agent.lab", "agent.version"),
    # Hubble's peer list finds the agent pods by the chart's labels: the names the chart and
    # its clients agree on (a constants-only module of the client side).
    "agent.observer.hubble.peer": COMMON + STAGES[:STAGES.index("agent.observer")]
    + ("agent.client.deploy_names",),
    "agent.main": COMMON + STAGES,  # the composition root of `podflow agent`
    "agent.cli": ("agent.errors",),  # dispatches subcommands by module NAME (importlib)
    "agent": ("agent.version",),  # agent/__init__.py
    "tui": BASE[:1] + ("agent.client", "agent.wire", "agent.filters"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            # `from agent import x` imports agent.x when x is a module
            out.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                       if (REPO / node.module.replace(".", "/") / alias.name).is_dir()
                       or (REPO / node.module.replace(".", "/") / f"{alias.name}.py").is_file())
    return out


def _rule_for(module: str) -> tuple[str, tuple[str, ...]]:
    best = max((key for key in ALLOWED if module == key or module.startswith(key + ".")),
               key=len, default=None)
    assert best is not None, f"{module} is in no layer of tests/test_layering.py: add it"
    return best, ALLOWED[best]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(p for top in ("agent", "tui") for p in (REPO / top).rglob("*.py")
                 if "programs" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_down(path: Path):
    module = _module_name(path)
    layer, allowed = _rule_for(module)
    wrong = []
    for lineno, name in _imports(path):
        if name == "bcc" or name.startswith("bcc."):
            if module != "agent.datapath.loader":
                wrong.append(f"line {lineno}: bcc (only agent.datapath.loader imports bcc)")
            continue
        if not (_within(name, "agent") or _within(name, "tui")) or name in ("agent", "tui"):
            continue
        if _within(name, layer) or any(_within(name, a) for a in allowed):
            continue
        wrong.append(f"line {lineno}: {name}")
    assert not wrong, f"{module} ({layer}) imports upward or sideways: " + "; ".join(wrong)


def test_pod_programs_import_nothing_of_podflow():
    """Programs run inside lab pods with `python -I -S`: standard library only."""
    for path in (REPO / "agent/lab/programs").glob("*.py"):
        names = [n for _, n in _imports(path)]
        assert not [n for n in names if n.split(".")[0] in ("agent", "tui", "podflow_api")], path


def test_the_table_catches_an_upward_arrow(tmp_path):
    """The checker itself: a stage importing the TUI or the lab is reported."""
    assert _rule_for("agent.datapath.loader")[0] == "agent.datapath"
    layer, allowed = _rule_for("agent.enrich.names")
    assert not any(_within("tui.app", a) for a in allowed)
    assert not any(_within("agent.lab", a) for a in allowed)
    assert not any(_within("agent.export.flowlog", a) for a in _rule_for("agent.datapath.tc")[1])


def test_config_imports_a_stage_only_inside_a_function():
    """Stages import agent.config for their section; agent.config reaches into a stage only
    inside a function (for a word of its vocabulary), so the two never import in a circle."""
    for path in (REPO / "agent/config").glob("*.py"):
        top: list[str] = []
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, ast.Import):
                top.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.append(node.module)
        wrong = [name for name in top if any(_within(name, s) for s in STAGES)]
        assert not wrong, f"{path.name} imports a stage at module level: {wrong}"
