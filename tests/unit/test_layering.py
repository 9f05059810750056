"""pyxen's layering, checked: the import-linter contracts in pyproject.toml
([tool.importlinter]: config under the hypervisor, net and storage, those
under xend; xm a pure client; the store standing alone) and no import
cycles anywhere in pyxen/.

Both read the import graph grimp builds from the source, which counts
imports inside functions and under ``if TYPE_CHECKING:`` like any other: a
cycle hidden behind either is still a cycle.  Both run in a child Python
with this tree first on its path, so the tree under test is the one
analysed, not whatever pyxen the venv would import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The imports that close the cycles pyxen has today (Domain and the feature
# modules calling each other back; the domain split removes them).  Each
# entry is importer -> imported.  The graph without these edges must have
# no cycle, so any new cycle fails; an entry whose import is gone fails too,
# so the list only shrinks.
ALLOWED_BACK_EDGES = {
    ("pyxen.xend.domain", "pyxen.xend.domains"),
    ("pyxen.xend.hvm", "pyxen.xend.domain"),
    ("pyxen.xend.passthrough", "pyxen.xend.domain"),
    ("pyxen.xend.passthrough", "pyxen.xend.domains"),
    ("pyxen.xend.vtpm", "pyxen.xend.domain"),
    ("pyxen.xend.vtpm", "pyxen.xend.domains"),
}


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def test_import_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(exe), "--no-cache", "--no-logo", "--config", str(ROOT / "pyproject.toml")],
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def import_graph() -> dict[str, dict[str, list[int]]]:
    """importer -> {imported: [line numbers]} over every module of pyxen."""
    code = """if 1:
        import json, grimp
        g = grimp.build_graph("pyxen", cache_dir=None)
        out = {}
        for m in g.modules:
            out[m] = {i: sorted(d["line_number"] for d in g.get_import_details(importer=m, imported=i))
                      for i in g.find_modules_directly_imported_by(m)}
        import pyxen
        print(json.dumps({"file": pyxen.__file__, "graph": out}))
    """
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert Path(data["file"]).resolve() == ROOT / "pyxen" / "__init__.py"
    return data["graph"]


def cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan,
    iterative: the graph may be deeper than the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in graph.get(v, {}):
                        out.append(sorted(comp))
    return out


def test_cycle_finder_finds_cycles():
    g = {"a": {"b": [1]}, "b": {"c": [1]}, "c": {"a": [3]}, "d": {"a": [1]}, "e": {"e": [1]}}
    assert sorted(cycles(g)) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b": [1]}, "b": {}}) == []


def test_no_new_import_cycles():
    graph = import_graph()
    stale = sorted(f"{a} -> {b}" for a, b in ALLOWED_BACK_EDGES if b not in graph.get(a, {}))
    assert not stale, f"these imports are gone: remove them from ALLOWED_BACK_EDGES: {stale}"
    pruned = {m: {i: ln for i, ln in imps.items() if (m, i) not in ALLOWED_BACK_EDGES}
              for m, imps in graph.items()}
    found = cycles(pruned)
    report = []
    for comp in found:
        edges = [f"{a} -> {b} (line {pruned[a][b]})" for a in comp for b in pruned[a] if b in comp]
        report.append("cycle: " + "; ".join(edges))
    assert not found, "\n".join(report)
