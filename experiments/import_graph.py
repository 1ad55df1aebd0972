"""Import graph of the bmiss package, function-local imports included: strongly connected sets.

    python experiments/import_graph.py            # prints every cycle set (none: exit 0)

A module imports a package (``from . import x``) or a name from a package: the edge goes to the
imported module (``x``), or to the package's ``__init__`` for a name. Exit status 1 when a cycle exists.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bmiss"


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    g = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    targets.append(sub if sub in mods else mod)
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m:
                    g[m].add(t)
    return g


def sccs(g: dict[str, set[str]]) -> list[list[str]]:
    index, low, on, stack, out, k = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = k[0]
        k[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    g = edges(modules())
    # a package's __init__ importing its own submodules is how packages re-export: not a cycle by itself
    for m in list(g):
        g[m] = {t for t in g[m] if not (t.startswith(m + "."))}
    cyc = sccs(g)
    for c in cyc:
        print(f"cycle set ({len(c)}): {', '.join(c)}")
    if not cyc:
        print("no import cycle among", len(g), "modules (function-local imports counted)")
    return 1 if cyc else 0


if __name__ == "__main__":
    sys.exit(main())
