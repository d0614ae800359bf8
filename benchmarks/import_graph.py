#!/usr/bin/env python
"""Print the toolkit's internal import graph, its import cycles and its longest functions.

    python -m benchmarks.import_graph                    # the package under finetune/lora
    python -m benchmarks.import_graph --root SOME/FOLDER --longest 15

Every .py file under --root is a module (named by its path); an import counts when it names another
module there, at the top of a file or inside a function (a function-local import still makes a
cycle, it only hides it until called). Cycles are the strongly connected components of more than
one module. Reads the code as text (ast): nothing is imported or run.
"""
import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.paths import LORA


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_modules(root: Path) -> dict[str, tuple[Path, ast.Module]]:
    skip = {"tests", "build", "dist", "__pycache__"}
    return {module_name(root, p): (p, ast.parse(p.read_text(encoding="utf-8"), str(p)))
            for p in sorted(root.rglob("*.py")) if not skip & set(p.relative_to(root).parts)}


def resolve(name: str, modules: set[str]) -> str | None:
    """The internal module an imported dotted name refers to (its longest known prefix)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, tree: ast.Module, modules: set[str], is_package: bool):
    """(target module, inside a function?) for every internal import of one module."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the module's package, up level - 1
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[:len(package) - (child.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                names = [f"{base}.{a.name}" if base else a.name for a in child.names]
            targets = {resolve(name, modules) for name in names} - {None, module}
            found.extend((target, in_function) for target in sorted(targets))  # one per statement and module
            visit(child, local)

    visit(tree, False)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def layer_of(module: str, layers) -> int | None:
    """The rank of a package module's layer (musicgen_lora.LAYERS, lowest first); None outside them."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for rank, layer in enumerate(layers):
        if parts[1] in ((layer,) if isinstance(layer, str) else layer):
            return rank
    return None


def layer_name(rank: int, layers) -> str:
    layer = layers[rank]
    return layer if isinstance(layer, str) else " | ".join(layer)


def grouped(graph: dict[str, set[str]], layers) -> dict[tuple[int, int], int]:
    """Imports between layers: (from layer, to layer) -> how many module imports."""
    out = defaultdict(int)
    for name, targets in graph.items():
        a = layer_of(name, layers)
        for target in targets:
            b = layer_of(target, layers)
            if a is not None and b is not None and a != b:
                out[a, b] += 1
    return dict(out)


def upward(graph: dict[str, set[str]], layers) -> list[tuple[str, str]]:
    """Imports that point up the layer order (module, target)."""
    return sorted((name, target) for name, targets in graph.items() for target in targets
                  if None not in (layer_of(name, layers), layer_of(target, layers))
                  and layer_of(target, layers) > layer_of(name, layers))


def longest_functions(modules, count: int):
    funcs = []
    for name, (path, tree) in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}", path, node.lineno))
    return sorted(funcs, reverse=True)[:count]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(LORA),
                   help="Folder whose .py files are the modules (default: finetune/lora).")
    p.add_argument("--longest", type=int, default=10, help="How many of the longest functions to list (default: 10).")
    p.add_argument("--edges", action="store_true", help="List every import edge (default: off).")
    args = p.parse_args(argv)
    root = Path(args.root)
    modules = read_modules(root)
    names = set(modules)
    graph, local_edges, top_edges = defaultdict(set), 0, 0
    for name, (path, tree) in modules.items():
        graph[name]
        for target, in_function in imports(name, tree, names, path.name == "__init__.py"):
            graph[name].add(target)
            local_edges += in_function
            top_edges += not in_function
    print(f"{len(modules)} modules under {root}; {top_edges} internal imports at module level, "
          f"{local_edges} inside functions")
    if args.edges:
        for name in sorted(graph):
            for target in sorted(graph[name]):
                print(f"  {name} -> {target}")
    found = cycles(graph)
    print(f"import cycles (counting imports inside functions): {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    from musicgen_lora import LAYERS

    print("imports between layers (musicgen_lora.LAYERS, lowest first; counted per importing module):")
    for (a, b), n in sorted(grouped(graph, LAYERS).items()):
        print(f"  {layer_name(a, LAYERS):>21} -> {layer_name(b, LAYERS):<21} {n:3d}" + ("   UP" if b > a else ""))
    up = upward(graph, LAYERS)
    print(f"imports pointing up a layer: {len(up)}")
    for name, target in up:
        print(f"  {name} -> {target}")
    found = found + [list(edge) for edge in up]
    print("longest functions (lines):")
    for lines, name, path, line in longest_functions(modules, args.longest):
        print(f"  {lines:4d}  {name}  ({path.relative_to(root)}:{line})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
