"""The codebase's shape, kept: one package beside thin scripts, no import cycles (counting imports
inside functions), a training loop of short functions, library code that takes parameters (not an
argparse Namespace), one home for the numbers that come from the model."""
import ast
import importlib.util
import re

from conftest import ROOT

PACKAGE = ROOT / "finetune" / "lora" / "musicgen_lora"
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "finetune" / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)

PATH_CODE = "sys." + "path"  # spelled so that `grep -rn` for it finds only the scripts' bootstrap lines
BOOTSTRAP = (PATH_CODE + '.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))'
             "  # where the musicgen_lora package lives")


def _python_files(*folders):
    return [p for folder in folders for p in sorted(folder.rglob("*.py")) if "__pycache__" not in p.parts]


def test_path_code_only_in_the_scripts_bootstrap_line():
    """Imports work by the layout alone: one identical bootstrap line per finetune/scripts tool, none elsewhere."""
    for path in _python_files(ROOT / "finetune", ROOT / "tests"):
        lines = [line.strip() for line in path.read_text().splitlines()
                 if PATH_CODE in line and line.strip().startswith(PATH_CODE)]
        if path.parent == ROOT / "finetune" / "scripts":
            assert lines in ([], [BOOTSTRAP]), (path, lines)
        else:
            assert lines == [], (path, lines)


def test_no_import_cycles_even_through_function_local_imports():
    modules = import_graph.read_modules(PACKAGE.parent)
    graph = {name: {t for t, _ in import_graph.imports(name, tree, set(modules), path.name == "__init__.py")}
             for name, (path, tree) in modules.items()}
    assert import_graph.cycles(graph) == []


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
        assert not re.search(r"getattr\(args\b|\bargs\.\w+", text), path


def test_sample_rate_and_hop_length_have_one_home():
    """Values that come from the model: a literal 32000 or 640 only where the MusicGen default is
    named (audio.py), nowhere as a silent default."""
    for path in _python_files(PACKAGE):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\b(32000|640)\b", code) and path.name != "audio.py":
                raise AssertionError(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
