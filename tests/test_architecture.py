"""The package's rooms and the direction of its imports (docs/ARCHITECTURE.md draws the same picture).

Every module of `headpursuit` belongs to one layer; a module may import its own layer and the layers
below it, never one above. The application shell (`headpursuit.app`, Hydra + W&B) sits on top: the
library never imports it. The import graph is read from the source with `ast` (function-level
imports included), so a lazy import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "headpursuit"

# Bottom to top. A module's layer is that of the longest prefix listed here.
LAYERS: list[tuple[str, ...]] = [
    (
        "headpursuit._version",
        "headpursuit.errors",
        "headpursuit.synthetic",
        "headpursuit.determinism",
        "headpursuit.fingerprint",
        "headpursuit.stats",
    ),
    ("headpursuit.models", "headpursuit.store"),
    (
        "headpursuit.concepts",
        "headpursuit.capture",
        "headpursuit.intervention",
        "headpursuit.somp",
        "headpursuit.metrics",
    ),
    ("headpursuit.ranking", "headpursuit.effects", "headpursuit.heads", "headpursuit.atlas"),
    ("headpursuit.tasks",),
    ("headpursuit", "headpursuit.__main__"),  # the public API re-exports the library
    ("headpursuit.app",),
]
# `python -m headpursuit` starts the Hydra app: the one library file allowed to reach the shell.
SHELL_ENTRY = {"headpursuit.__main__"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")
    return best


def imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of the headpursuit modules that `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "headpursuit"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "headpursuit":
                continue
            out.add(target)
            # `from headpursuit import x` may name a submodule x
            out |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in package_modules()}
    return out


def test_every_module_has_a_layer():
    for module in package_modules():
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    modules = package_modules()
    bad = []
    for module, path in modules.items():
        own = layer_of(module)
        for target in imported_modules(path, module):
            if module in SHELL_ENTRY and target.startswith("headpursuit.app"):
                continue
            if layer_of(target) > own:
                bad.append(f"{module} (layer {own}) imports {target} (layer {layer_of(target)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_library_never_imports_the_application_shell():
    modules = package_modules()
    bad = [
        f"{m} imports {t}"
        for m, p in modules.items()
        if not m.startswith("headpursuit.app") and m not in SHELL_ENTRY
        for t in imported_modules(p, m)
        if t.startswith("headpursuit.app")
    ]
    assert not bad, bad


def test_no_private_names_imported_across_modules():
    """`from headpursuit.x import _private` from another module: a name that is not an interface."""
    bad = []
    for module, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("headpursuit"):
                bad += [
                    f"{module}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not bad, bad


TESTS = Path(__file__).resolve().parent


def private_imports(path: Path) -> list[str]:
    """`from <module> import _name` lines of `path`: a private name taken from another module."""
    return [
        f"{path.name}:{node.lineno}: from {node.module} import {a.name}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        for a in node.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]


def test_no_test_imports_a_private_name():
    """A test takes the package's public names, and shares its helpers through a helper module's
    public names (e.g. tests/vlm_samples.py), never another file's `_private` ones."""
    bad = [line for path in sorted(TESTS.glob("*.py")) for line in private_imports(path)]
    assert not bad, bad


# torch's hook dicts are private: the library asks `headpursuit.models.hooks.live_hooks` instead
TORCH_PRIVATE_HOOKS = {"_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks"}


def private_hook_reads(path: Path) -> list[str]:
    """`x._forward_pre_hooks` (and torch's other hook dicts) read in `path`."""
    return [
        f"{path.name}:{node.lineno}: .{node.attr}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and node.attr in TORCH_PRIVATE_HOOKS
    ]


def test_the_library_never_reads_torch_private_hooks():
    bad = [line for path in package_modules().values() for line in private_hook_reads(path)]
    assert not bad, bad


def test_the_checkers_see_a_private_import_and_a_private_hook_read(tmp_path):
    f = tmp_path / "test_x.py"
    f.write_text(
        "from headpursuit.capture import _thing, public\nfrom test_y import _helper\n"
        "n = len(lm.o_proj(0)._forward_pre_hooks)\n"
    )
    assert private_imports(f) == [
        "test_x.py:1: from headpursuit.capture import _thing",
        "test_x.py:2: from test_y import _helper",
    ]
    assert private_hook_reads(f) == ["test_x.py:3: ._forward_pre_hooks"]


def test_the_checker_sees_an_upward_import(tmp_path):
    """The graph reader finds a function-level import and a relative one (a checker that sees
    nothing would pass everything)."""
    src = tmp_path / "headpursuit" / "models"
    src.mkdir(parents=True)
    f = src / "x.py"
    f.write_text("def f():\n    from headpursuit.app import run\n    from ..tasks import base\n")
    global PACKAGE
    old, PACKAGE = PACKAGE, tmp_path / "headpursuit"
    try:
        found = imported_modules(f, "headpursuit.models.x")
    finally:
        PACKAGE = old
    assert {"headpursuit.app", "headpursuit.tasks"} <= found
    assert layer_of("headpursuit.tasks") > layer_of("headpursuit.models.x")


# Packages the library must not need: the application shell's (Hydra, W&B, hub datasets, plots)
# and the optional extras' (embedded GGUF loader, toxicity scorers, vision, caption metrics).
NOT_LIBRARY = [
    "hydra",
    "omegaconf",
    "wandb",
    "datasets",
    "submitit",
    "matplotlib",
    "detoxify",
    "profanity_check",
    "sacrebleu",
    "PIL",
    "gguf",
    "accelerate",
]


def test_library_imports_without_the_shell_dependencies():
    """`import headpursuit` with the pipeline/toxicity/vision extras made unimportable: the library
    works with torch, transformers, safetensors, pandas and tqdm alone."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {NOT_LIBRARY!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked for this test: {{name}}")
                return None
        sys.meta_path.insert(0, Block())
        import headpursuit as hp
        from headpursuit import capture, effects, heads, intervention, ranking, somp  # noqa: F401
        assert callable(hp.load_model) and callable(hp.rank_heads) and callable(hp.scale_heads)
        assert hp.__version__
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("library ok", hp.__version__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "library ok" in out.stdout


def test_version_matches_the_package_metadata():
    from importlib.metadata import version

    import headpursuit

    assert headpursuit.__version__ == version("headpursuit")


@pytest.mark.parametrize("module", ["hydra", "wandb", "datasets"])
def test_importing_the_library_does_not_import(module):
    code = f"import sys, headpursuit; print({module!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
