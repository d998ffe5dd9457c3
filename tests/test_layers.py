"""The package's layers run one way: no module imports from a layer above its own, and no modules
import each other in a circle (imports inside functions count too).

Layers, low to high (docs/design.md):
0 errors, files, progress
1 data, and the pure scoring functions (evaluation.coco_metrics, vl_metrics, diversity, references)
2 models
3 criterions, generators
4 tasks, checkpoint
5 inference, and what loads models to time or decode (evaluation.latency, chart, baselines)
6 hub
7 cli
"""
import ast
import os
from collections import defaultdict

from conftest import REPO

PKG = "fairseq_nar_caption"
TOP = {"errors": 0, "files": 0, "progress": 0, "data": 1, "models": 2, "criterions": 3, "generators": 3,
       "tasks": 4, "checkpoint": 4, "inference": 5, "evaluation": 5, "hub": 6, "cli": 7}
PURE_SCORING = {"coco_metrics", "vl_metrics", "diversity", "references"}


def layer(module: str):
    parts = module.split(".")[1:]
    if not parts:
        return None  # the package itself (it imports everything to register it)
    if parts[0] == "evaluation" and len(parts) > 1 and parts[1] in PURE_SCORING:
        return 1
    if parts[0] not in TOP:
        raise AssertionError(f"{module}: a top-level module without a layer; add it to TOP (and docs/design.md)")
    return TOP[parts[0]]


def modules():
    """{module name: path} of every module of the package."""
    out = {}
    for root, _, files in os.walk(os.path.join(REPO, PKG)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
    return out


def imports():
    """{module: set of package modules it imports} (the longest name that is a module of the package)."""
    mods = modules()
    edges = defaultdict(set)
    for mod, path in mods.items():
        package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                for k in range(len(parts), 0, -1):
                    cand = ".".join(parts[:k])
                    if cand in mods:
                        if cand != mod and not mod.startswith(cand + "."):  # a package's own __init__ is no edge
                            edges[mod].add(cand)
                        break
    return edges


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for mod, targets in imports().items():
        for t in targets:
            la, lb = layer(mod), layer(t)
            if la is not None and lb is not None and lb > la:
                upward.append(f"{mod} (layer {la}) -> {t} (layer {lb})")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    edges = imports()
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                circles.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    # a package's __init__ importing its own modules (registration) is not a circle of modules
    circles = [c for c in circles if not any(a != b and b.startswith(a + ".") for a in c for b in c)]
    assert not circles, f"import circles: {circles}"


def test_the_layer_check_finds_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The check itself: a hand-made package with one upward import and one circle is caught."""
    import sys

    pkg = tmp_path / PKG
    for sub in ("data", "cli"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from ..cli import b\n")
    (pkg / "cli" / "b.py").write_text("from ..data import a\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    edges = imports()
    assert f"{PKG}.cli.b" in edges[f"{PKG}.data.a"] and f"{PKG}.data.a" in edges[f"{PKG}.cli.b"]
    try:
        test_no_module_imports_from_a_layer_above_its_own()
    except AssertionError as e:
        assert "data.a (layer 1) -> fairseq_nar_caption.cli.b (layer 7)" in str(e)
    else:
        raise AssertionError("the upward import was not found")
    try:
        test_no_import_circles()
    except AssertionError as e:
        assert "data.a" in str(e) and "cli.b" in str(e)
    else:
        raise AssertionError("the circle was not found")
