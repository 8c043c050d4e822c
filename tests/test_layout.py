"""The package layout: engine stages import downhill only, and the engine never imports export/Java.

The layering (see ``fiji_emseg/engine/__init__.py``) is ``data < models < inference < evaluation <
training``: a module may import its own stage and earlier ones. ``fiji_emseg.export`` builds on the
engine, never the reverse. The checker parses every module's imports, including those inside
functions, so a lazy import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fiji_emseg"

#: Engine stages in import order: each may import the ones before it.
STAGES = ("data", "models", "inference", "evaluation", "training")
#: Engine modules outside the stages, shared by all of them; they import no stage.
SHARED = ("callbacks",)
#: Packages the engine must never import (Java, Fiji, the command line, model export).
FORBIDDEN_FOR_ENGINE = ("fiji_emseg.export", "fiji_emseg.bridge", "fiji_emseg.cli", "fiji_emseg.api",
                        "fiji_emseg.demo", "jpype", "scyjava", "imagej")


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in *path*, relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import sub`` imports the sub-module when it is one
            for a in node.names:
                sub = f"{target}.{a.name}"
                candidate = root.parent / Path(*sub.split("."))
                out.append((node.lineno, sub if candidate.with_suffix(".py").is_file() or candidate.is_dir() else target))
    return out


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["fiji_emseg", "engine"] or len(parts) < 3:
        return None
    return parts[2]


def layout_violations(root: Path) -> list[str]:
    """Every import that breaks the layering, as 'file:line: importer -> imported (why)'."""
    problems: list[str] = []
    engine = root / "engine"
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        my_stage = stage_of(me)
        rel = path.relative_to(root.parent)
        if path.parent == engine and path.stem not in (*SHARED, "__init__"):
            problems.append(f"{rel}: engine module outside a stage sub-package; move it into one of {STAGES}")
        for line, target in imported_modules(path, root):
            where = f"{rel}:{line}: {me} -> {target}"
            in_engine = me.startswith("fiji_emseg.engine")
            if in_engine and any(target == f or target.startswith(f + ".") for f in FORBIDDEN_FOR_ENGINE):
                problems.append(f"{where} (the engine must not import export, the CLI, the bridge or Java)")
                continue
            their_stage = stage_of(target)
            if not in_engine or their_stage is None or their_stage == my_stage:
                continue
            if my_stage in SHARED or (my_stage is None and me != "fiji_emseg.engine"):
                problems.append(f"{where} (shared engine modules import no stage)")
            elif my_stage in STAGES and their_stage in STAGES and STAGES.index(their_stage) > STAGES.index(my_stage):
                problems.append(f"{where} (upward: {my_stage} comes before {their_stage})")
    return problems


def test_engine_imports_run_downhill_and_never_reach_export() -> None:
    problems = layout_violations(PACKAGE)
    assert not problems, "layout violations:\n" + "\n".join(problems)


def test_every_stage_is_a_package_with_a_docstring_naming_its_imports() -> None:
    for stage in STAGES:
        init = PACKAGE / "engine" / stage / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init} must say what the stage may import"
    flow = ast.get_docstring(ast.parse((PACKAGE / "engine" / "__init__.py").read_text())) or ""
    assert all(s in flow for s in STAGES)


def _write(root: Path, rel: str, text: str = "") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("engine/data/volume_io.py", "from ..training.trainer import x\n", "upward: data comes before training"),
    ("engine/inference/predictor.py", "def f():\n    from ..evaluation import metrics\n", "upward: inference comes before evaluation"),
    ("engine/models/store.py", "import fiji_emseg.export.onnx_export\n", "must not import export"),
    ("engine/inference/predictor.py", "from ...bridge.jvm import ensure_jvm\n", "must not import export, the CLI, the bridge"),
    ("engine/callbacks.py", "from .data import files\n", "shared engine modules import no stage"),
    ("engine/new_flat_module.py", "", "outside a stage sub-package"),
])
def test_checker_reports_each_kind_of_violation(tmp_path: Path, module: str, source: str, expected: str) -> None:
    root = tmp_path / "fiji_emseg"
    for rel in ("__init__.py", "engine/__init__.py", "engine/callbacks.py", "export/__init__.py",
                "export/onnx_export.py", "bridge/__init__.py", "bridge/jvm.py",
                *(f"engine/{s}/__init__.py" for s in STAGES), "engine/data/files.py",
                "engine/training/trainer.py", "engine/evaluation/metrics.py"):
        _write(root, rel)
    _write(root, "export/onnx_export.py", "from ..engine.training import trainer\n")  # downhill: allowed
    _write(root, "engine/training/trainer.py", "from ..inference import predictor\nfrom ..evaluation.metrics import scores\n")
    assert layout_violations(root) == []  # the allowed edges pass
    _write(root, module, source)
    problems = layout_violations(root)
    assert len(problems) == 1 and expected in problems[0], problems


FORBIDDEN_LOADED = "('jpype', '_jpype', 'scyjava', 'imagej', 'fiji_emseg.bridge', 'fiji_emseg.cli', 'fiji_emseg.export', 'fiji_emseg.api')"


def _loaded_after(statements: str) -> tuple[int, list[str]]:
    code = (
        "import sys\n" + statements +
        f"bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN_LOADED}))\n"
        "print(len([m for m in sys.modules if m.startswith('fiji_emseg.engine.')]), *bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    first, *bad = res.stdout.split()
    return int(first), bad


def test_importing_the_engine_loads_no_java_fiji_or_command_line() -> None:
    _, bad = _loaded_after("import fiji_emseg.engine\n")
    assert bad == []
    n_modules, bad = _loaded_after(
        "import importlib, pkgutil\nimport fiji_emseg.engine as e\n"
        "for info in pkgutil.walk_packages(e.__path__, 'fiji_emseg.engine.'):\n"
        "    importlib.import_module(info.name)\n")
    assert bad == []
    assert n_modules >= 30  # every engine module was really imported
