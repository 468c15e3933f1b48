"""The package's layering: no import cycles, deferred (function-level) imports included; only
imports under ``if TYPE_CHECKING:`` are exempt. And its files: every file the package reads at
run time ships in a wheel."""

from __future__ import annotations

import ast
import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import torchpenalty

ROOT = Path(torchpenalty.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The torchpenalty modules ``path`` imports anywhere (parent packages included, since
    importing ``a.b.c`` runs ``a.b``'s ``__init__`` first)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            stem = node.module or ""
            base = f"{base}.{stem}".strip(".") if node.level else stem
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target:
                if target in modules and target != here:
                    found.add(target)
                target = target.rpartition(".")[0]
    return found


def test_no_import_cycles():
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imports_of(p, modules) for p in paths}
    # a package's __init__ importing its own submodules is not a cycle of the layering
    for name, deps in graph.items():
        graph[name] = {
            d for d in deps if not (d.startswith(name + ".") or name.startswith(d + "."))
        }
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_data_file_is_package_data():
    """A file the package reads (``py.typed``) that no package-data pattern names works in an
    editable install and is missing from a wheel."""
    pyproject = ROOT.parent.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    config = tomllib.loads(pyproject.read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["torchpenalty"]
    data = [p for p in ROOT.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert data, "no data files found: the test would pass vacuously"
    missing = [p.name for p in data if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_developers_layout_names_every_module():
    """DEVELOPERS.md's layout is the map of the package: a module missing from it is a module
    nobody reading it knows about."""
    developers = ROOT.parent.parent / "DEVELOPERS.md"
    if not developers.is_file():
        pytest.skip("not a source checkout")
    text = developers.read_text()
    modules = [
        p
        for p in ROOT.rglob("*")
        if p.suffix in (".py", ".cpp", ".h") and p.name not in ("__init__.py", "__main__.py")
    ]
    missing = [str(p.relative_to(ROOT)) for p in modules if p.name not in text]
    assert not missing, f"not in DEVELOPERS.md's layout: {missing}"


def test_at_most_ten_top_level_modules():
    """The layout a newcomer reads in one guess: ten top-level modules or packages at most
    (``__init__`` and ``__main__`` are the package itself)."""
    top = sorted(
        p.stem if p.is_file() else p.name
        for p in ROOT.iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
        or (p.is_dir() and (p / "__init__.py").is_file())
    )
    assert len(top) <= 10, top


def test_no_compiled_sources_ship():
    """Nothing is compiled on a user's machine at first use: the package holds no C++."""
    sources = [p for p in ROOT.rglob("*") if p.suffix in (".cpp", ".cc", ".c", ".h", ".cu")]
    assert not sources, sources


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


def test_import_loads_neither_dynamo_nor_inductor():
    """``import torchpenalty`` (and the command line's modules) stays light: the compiler
    loads on first use of a compiled kernel only."""
    code = (
        "import sys, torchpenalty, torchpenalty.cli, torchpenalty.integrations.callbacks\n"
        "loaded = [m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor'))]\n"
        "assert not loaded, loaded\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr


def test_an_unwritable_compile_cache_breaks_neither_import_nor_eager_use(tmp_path):
    """A compile cache directory that cannot be created (under a file): import and the eager
    kernels work; a compiled kernel falls back to eager with one warning, the same figures."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = (
        "import warnings, torch, torchpenalty as tp\n"
        "m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))\n"
        "eager = tp.Regularizer(m, 'l1(0.1) + l2(0.1)', backend='eager')\n"
        "eager.prox_(0.01); want = eager.value()\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    compiled = tp.Regularizer(m, 'l1(0.1) + l2(0.1)', backend='compile')\n"
        "    got = compiled.value(); compiled.value()\n"
        "    other = tp.Regularizer(m, tp.GroupLasso(0.1), backend='compile'); other.value()\n"
        "assert torch.allclose(got, want), (got, want)\n"
        "said = [w for w in seen if 'compiled kernels are unavailable' in str(w.message)]\n"
        "assert len(said) == 1, [str(w.message) for w in seen]\n"
    )
    cache = str(blocker / "cache")
    proc = _run(code, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=cache)
    assert proc.returncode == 0, proc.stderr


def test_old_module_paths_forward_to_the_new_places():
    """Modules of earlier releases import from their old paths: the same objects, and a
    DeprecationWarning naming the new place where the old one was not public API. One fresh
    interpreter imports every old path (none imported before it)."""
    code = (
        "import importlib, warnings, torchpenalty\n"
        "for old, new in sorted(torchpenalty.MOVED.items()):\n"
        "    with warnings.catch_warnings(record=True) as seen:\n"
        "        warnings.simplefilter('always')\n"
        "        moved = importlib.import_module(f'torchpenalty.{old}')\n"
        "    target = importlib.import_module(f'torchpenalty.{new}')\n"
        "    names = [n for n in vars(target) if not n.startswith('_')]\n"
        "    assert names and all(getattr(moved, n) is getattr(target, n) for n in names), old\n"
        "    said = [w for w in seen if issubclass(w.category, DeprecationWarning)\n"
        "            and f'torchpenalty.{new}' in str(w.message)]\n"
        "    public = old in torchpenalty.PUBLIC_ALIASES\n"
        "    assert len(said) == (0 if public else 1), (old, [str(w.message) for w in seen])\n"
        "print(len(torchpenalty.MOVED))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(torchpenalty.MOVED) >= 15
