"""The package's architecture, checked: layers (import-linter), no private cross-module imports, typed API."""

from __future__ import annotations

import ast
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import hf_attn_inspect

PKG = Path(hf_attn_inspect.__file__).parent
MODULES = sorted(p for p in PKG.rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _module_name(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_import_linter_contracts_hold():
    """The layers contract and the no-cycles contract of pyproject.toml are kept (what `lint-imports` checks).

    Run in a subprocess: import-linter reconfigures logging (``dictConfig``), which would disable the
    loggers of every module already imported in this test process.
    """
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(PKG.parent / 'pyproject.toml')!r}, no_cache=True, no_logo=True))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_contract_lists_every_layer():
    """Every subpackage of hf_attn_inspect is one of the layers named in the contract."""
    import tomllib

    config = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = config["contracts"][0]["layers"]
    subpackages = {f"hf_attn_inspect.{m.name}" for m in pkgutil.iter_modules([str(PKG)]) if m.ispkg}
    modules = {f"hf_attn_inspect.{m.name}" for m in pkgutil.iter_modules([str(PKG)]) if not m.ispkg}
    assert subpackages <= set(layers)
    assert modules - set(layers) <= {"hf_attn_inspect.__main__"}


def test_no_module_imports_private_names_of_another():
    """``from x import _name`` only within the module that defines it: private helpers stay private."""
    offenders = []
    for path in MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(path, node)
                if not source.startswith("hf_attn_inspect"):
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{_module_name(path)} imports {alias.name} from {source}")
                if any(part.startswith("_") and not part.startswith("__") for part in source.split(".")):
                    offenders.append(f"{_module_name(path)} imports private module {source}")
    assert not offenders, "\n".join(offenders)


# parameter names whose value is always one of the project's own types
_PROJECT_TYPED = {"inspector", "result", "results", "batch", "probe", "site", "stats", "masks", "report", "finding"}


def _public_functions():
    for info in pkgutil.walk_packages([str(PKG)], prefix="hf_attn_inspect."):
        if info.name.endswith("__main__"):
            continue
        module = __import__(info.name, fromlist=["_"])
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
            elif inspect.isclass(obj):
                for mname, meth in vars(obj).items():
                    if inspect.isfunction(meth) and (not mname.startswith("_") or mname == "__init__"):
                        yield f"{module.__name__}.{name}.{mname}", meth


def test_public_parameters_with_a_project_type_are_not_typed_any():
    """A parameter that always holds an inspector, result, batch, probe... says so in its annotation."""
    untyped = []
    for qualname, fn in _public_functions():
        for pname, param in inspect.signature(fn).parameters.items():
            ann = param.annotation
            text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
            if pname in _PROJECT_TYPED and (ann is inspect.Parameter.empty or text in ("Any", "typing.Any")):
                untyped.append(f"{qualname}({pname})")
    assert not untyped, "parameters typed Any or untyped: " + ", ".join(untyped)


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_every_module_has_a_docstring(path):
    assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path.name} has no module docstring"
