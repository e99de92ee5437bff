"""Imports point down only (docs/design.md, "Layering"): a walk over every module of dp/ and
dp/envs/ with ``ast`` fails on an import cycle, an arrow the layering forbids, a two-way tie
between sibling packages, or a private name imported from another package."""
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# modules anything may import; they import nothing of dp but each other
LEAVES = {"dp", "dp.errors", "dp.constants", "dp.keys", "dp.results", "dp.cli_errors", "dp.overrides", "dp.envs.errors"}
# package -> the packages it may import (leaves always allowed); entry points (*.cli, dp.collect) may import anything
ALLOWED = {
    "dp.core": set(),
    "dp.data": set(),
    "dp.runtime": set(),
    "dp.envs": set(),
    "dp.recipes": set(),
    "dp.checkpoint": {"dp.data", "dp.runtime"},
    "dp.diffusion": {"dp.core"},
    "dp.encoders": {"dp.core"},
    "dp.policies": {"dp.core", "dp.diffusion", "dp.encoders", "dp.data", "dp.checkpoint", "dp.runtime"},
    "dp.deploy": {"dp.core", "dp.policies", "dp.checkpoint", "dp.runtime"},
    "dp.video": {"dp.core", "dp.diffusion", "dp.encoders", "dp.data"},
    "dp.eval": {"dp.policies", "dp.video", "dp.data", "dp.checkpoint", "dp.envs", "dp.recipes"},
    "dp.control": {"dp.policies", "dp.checkpoint", "dp.eval", "dp.runtime", "dp.deploy", "dp.envs"},
    "dp.train": {"dp.policies", "dp.data", "dp.checkpoint", "dp.eval", "dp.envs"},
    "dp.bench": {"dp.core", "dp.diffusion", "dp.encoders", "dp.policies", "dp.video", "dp.data", "dp.checkpoint",
                 "dp.eval", "dp.train", "dp.deploy", "dp.runtime", "dp.recipes"},
}
SIBLINGS = {"dp.train", "dp.eval", "dp.bench", "dp.control"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, imported name or "")}, every import in the file (lazy ones too)."""
    modules = {_module_name(p): p for top in ("dp",) for p in (ROOT / top).rglob("*.py")}
    out: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out[mod] |= {(a.name, "") for a in node.names if a.name.split(".")[0] == "dp"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "dp":
                for a in node.names:  # `from dp.x import y` may name a module y
                    target = f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    out[mod].add((target, a.name))
    return out


def _package(mod: str) -> str:
    if mod in LEAVES:
        return mod
    return ".".join(mod.split(".")[:2])


def _entry_point(mod: str) -> bool:
    return mod.endswith(".cli") or mod == "dp.collect"


def test_no_import_cycles():
    graph = {m: {t for t, _ in targets if t != m} for m, targets in _imports().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_point_down_and_siblings_do_not_tie():
    bad, arrows = [], set()
    for mod, targets in _imports().items():
        src = _package(mod)
        for target, name in targets:
            dst = _package(target)
            if dst == src or dst in LEAVES:
                continue
            if name.startswith("_"):
                bad.append(f"{mod} imports the private name {target}.{name}")
            if src in LEAVES:
                bad.append(f"{mod} is a leaf module but imports {target}")
            elif not _entry_point(mod) and dst not in ALLOWED.get(src, set()):
                bad.append(f"{mod} ({src}) may not import {target} ({dst})")
            if not _entry_point(mod):
                arrows.add((src, dst))
    ties = sorted(f"{a} <-> {b}" for a, b in arrows if (b, a) in arrows and a < b and {a, b} <= SIBLINGS)
    assert not bad and not ties, "\n".join(bad + ties)


def test_the_walk_sees_the_imports_it_checks():
    """The walk itself: it finds a known arrow and the lazy imports inside functions."""
    imports = _imports()
    assert ("dp.checkpoint", "load_config") in imports["dp.policies.registry"]
    assert any(t == "dp.policies.registry" for t, _ in imports["dp.policies.base"])  # imported inside a method
