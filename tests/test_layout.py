"""The codebase's shape, kept: the installed package is the product only (no workshop or test code in
it, no sys.path edits anywhere), its folders are layers whose imports only point down, no import
cycles (counting imports inside functions), a training loop of short functions, library code that
takes parameters (not an argparse Namespace), one home for the numbers that come from the model."""
import ast
import re
import subprocess

import pytest

from benchmarks import import_graph
from musicgen_lora import LAYERS

from conftest import ROOT

PACKAGE = ROOT / "finetune" / "lora" / "musicgen_lora"


def _python_files(*folders):
    return [p for folder in folders for p in sorted(folder.rglob("*.py")) if "__pycache__" not in p.parts]


def _package_graph():
    modules = import_graph.read_modules(PACKAGE.parent)
    return {name: {t for t, _ in import_graph.imports(name, tree, set(modules), path.name == "__init__.py")}
            for name, (path, tree) in modules.items() if name.startswith("musicgen_lora")}


def test_no_code_edits_the_import_path():
    """Imports work by the install alone (./install.sh installs the package): no script, test or
    benchmark edits sys.path to find it."""
    for path in _python_files(ROOT / "finetune", ROOT / "tests", ROOT / "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} touches sys.path")


def test_every_package_module_sits_in_a_layer_and_no_import_points_up():
    graph = _package_graph()
    unplaced = [m for m in graph if m.count(".") >= 1 and import_graph.layer_of(m, LAYERS) is None]
    assert unplaced == [], f"modules outside musicgen_lora.LAYERS: {unplaced}"
    assert import_graph.upward(graph, LAYERS) == []


def test_the_layering_check_can_fail():
    """The same check on a graph with one import pointing up (model -> training) finds it."""
    graph = {"musicgen_lora.model.loss": {"musicgen_lora.training.config"}, "musicgen_lora.training.config": set()}
    assert import_graph.upward(graph, LAYERS) == [("musicgen_lora.model.loss", "musicgen_lora.training.config")]


def test_no_import_cycles_even_through_function_local_imports():
    assert import_graph.cycles(_package_graph()) == []


def test_the_product_imports_no_workshop_or_test_code():
    for path in _python_files(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.split(".")[0] in ("benchmarks", "tests", "conftest", "tunes", "pytest")]
            assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} imports {bad}"


def test_build_artefacts_are_not_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    if not tracked:
        pytest.skip("not a git checkout")
    assert not [f for f in tracked if ".egg-info" in f or f.startswith(("build/", "dist/"))]


def test_training_functions_are_short_and_state_is_not_rebound_from_closures():
    for path in _python_files(PACKAGE / "training"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}:{node.name}"
            assert not isinstance(node, ast.Nonlocal), f"{path.name}:{node.lineno}"


def test_library_code_takes_parameters_not_the_argparse_namespace():
    for path in _python_files(PACKAGE):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        text = path.read_text()
        assert not re.search(r"getattr\(args\b|\bargs\.(?!py\b)\w+", text), path


def test_sample_rate_and_hop_length_have_one_home():
    """Values that come from the model: a literal 32000 or 640 only where the MusicGen default is
    named (audio/reader.py), nowhere as a silent default."""
    for path in _python_files(PACKAGE):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\b(32000|640)\b", code) and path.relative_to(PACKAGE).as_posix() != "audio/reader.py":
                raise AssertionError(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")


def test_a_built_wheel_ships_the_package_and_nothing_of_the_workshop(tmp_path):
    """`pip install .` (not editable) installs what a wheel holds: musicgen_lora only -- no benchmark,
    test fixture or script of the checkout -- and every console command's module is in it."""
    import sys
    import zipfile

    import tomllib

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named setuptools" in proc.stderr:
        pytest.skip("setuptools is not installed here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert {n.split("/")[0] for n in names} == {"musicgen_lora", "musicgen_lora-0.2.0.dist-info"}, names
    modules = {n[:-3].replace("/", ".") for n in names if n.endswith(".py")}
    assert not [m for m in modules if m.split(".")[1:2] in (["testing"], ["benchmarks"])]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert all(target.split(":")[0] in modules for target in scripts.values()), scripts
