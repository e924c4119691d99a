"""featstore's import graph: every ``featstore.*`` import of every module (top level and
inside functions), its cycles, and the arrows that run up a layer.

    python tools/import_graph.py [--lazy]   # --lazy: count imports inside functions too

Exit status 1 when there is a cycle or an upward arrow. Layers, lowest first: a module may
import its own layer and the ones below it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "featstore"
LAYERS = [  # (layer, module prefixes)
    ("base", ["_hashing", "_lazy", "errors", "choices", "options", "runkeys", "_version", "grid",
              "outputs", "progress"]),
    ("data", ["data", "task", "metrics", "records", "rows"]),
    ("models", ["models"]),
    ("store", ["store"]),
    ("runtime", ["runtime"]),
    ("extract", ["extract"]),
    ("probe", ["probe"]),
    ("heads", ["fusion", "finetune"]),
    ("study", ["pipeline", "report", "demo"]),
    ("cli", ["cli", "__init__", "__main__"]),
]


def layer(module: str) -> int:
    name = module.removeprefix("featstore.").removeprefix("featstore") or "__init__"
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise SystemExit(f"{module}: in no layer; add it to LAYERS")


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, lazy: bool, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in _nodes(tree.body, lazy):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            if not all(n in known for n in names):  # `from pkg import submodule` only: the
                names.append(node.module)           # package's own names are not used
        for n in names:
            if n.startswith("featstore"):
                while n not in known and "." in n:
                    n = n.rsplit(".", 1)[0]
                if n in known:
                    found.add(n)
    return found


def _nodes(body: list[ast.stmt], lazy: bool):
    """The statements of a module, and with ``lazy`` every node inside them; never the
    body of ``if TYPE_CHECKING:`` (annotations, not imports)."""
    for node in body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            yield from _nodes(node.orelse, lazy)
            continue
        if lazy:
            yield from ast.walk(node)
        else:
            yield node


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lazy", action="store_true")
    args = ap.parse_args()
    mods = modules()
    graph = {m: imports(p, args.lazy, set(mods)) - {m} for m, p in mods.items()}
    # a package importing its own submodules (its public names) is not an arrow of the design
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    up = sorted((m, d) for m, deps in graph.items() for d in deps if layer(d) > layer(m))
    cycles = strongly_connected(graph)
    for m, d in up:
        print(f"up a layer: {m} ({LAYERS[layer(m)][0]}) -> {d} ({LAYERS[layer(d)][0]})")
    for c in cycles:
        print("cycle: " + " -> ".join(sorted(c)))
    n = sum(len(v) for v in graph.values())
    print(f"{len(graph)} modules, {n} arrows ({'with' if args.lazy else 'without'} imports "
          f"inside functions): {len(cycles)} cycles, {len(up)} arrows up a layer")
    return 1 if up or cycles else 0


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
