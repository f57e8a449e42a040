"""The models import with jax, flax and numpy only: heavier libraries load where they are used."""

import subprocess
import sys


def test_import_pulls_in_nothing_beyond_jax_flax_numpy():
    # whatever `import jax, flax.nnx, numpy` loads (flax itself pulls optax) is allowed; nothing else
    code = (
        "import sys; import jax, flax.nnx, numpy; before = set(sys.modules); import hubert_jax; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'hubert_jax'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top or inside a function (importing a.b.c also runs
    a and a.b), read from the source."""
    import ast
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hubert_jax")
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path[:-3], os.path.dirname(root)).replace(os.sep, ".")
                files[module.removesuffix(".__init__")] = path
    graph = {}
    for module, path in files.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        named = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                named.add(base)
                named.update(f"{base}.{alias.name}" for alias in node.names)
        imported = set()
        for name in named:
            parts = name.split(".")
            imported.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        # a module's own packages are running when it is imported: not an edge
        graph[module] = {m for m in imported if m in files and m != module and not module.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_imports_in_no_circle():
    graph = _import_graph()
    # the graph is read: every module, with imports at the top and inside functions alike
    assert len(graph) > 80 and "hubert_jax.config" in graph["hubert_jax.models.model"]
    assert "hubert_jax.auto" in graph["hubert_jax.convert.cli"]  # imported inside main()
    assert _cycles(graph) == []


def test_the_circle_check_finds_a_circle():
    # the check itself: a -> b -> c -> a, beside an acyclic d -> a
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layers_point_down():
    """Weights I/O sits below everything that loads or saves a model; the load/save core imports no model
    class (the Auto classes are apart from it); the models know nothing of training or conversion."""
    graph = _import_graph()
    weights = [m for m in graph if m.startswith("hubert_jax.weights")]
    assert len(weights) == 3
    for module in weights:
        assert all(m.startswith("hubert_jax.weights") for m in graph[module]), (module, graph[module])
    for user in ("hubert_jax.pretrained", "hubert_jax.convert.original", "hubert_jax.export",
                 "hubert_jax.models.pretraining_hubert"):
        assert any(m.startswith("hubert_jax.weights.") for m in graph[user]), user
    assert not any(m.startswith(("hubert_jax.models", "hubert_jax.auto")) for m in graph["hubert_jax.pretrained"])
    for module in (m for m in graph if m.startswith("hubert_jax.models")):
        assert not any(m.startswith(("hubert_jax.training", "hubert_jax.convert")) for m in graph[module]), module
