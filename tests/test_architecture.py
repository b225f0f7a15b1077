"""The package's shape: which layer may import which (read from the source with ``ast``), and that nothing unpickles.

The layers and their rules are the ones ``docs/ARCHITECTURE.md`` draws; a module that no layer claims fails
the test, so a new module is placed on purpose.
"""

import ast
import shutil
from pathlib import Path

import pytest

import encoder_clf

PACKAGE = Path(encoder_clf.__file__).resolve().parent
ROOT = PACKAGE.parent

# Bottom to top. A layer is a list of top-level names under encoder_clf (a subpackage or a module).
LAYERS = {
    "core": ["errors", "settings", "runtime", "files"],
    "model": ["model"],
    "data": ["data"],
    "persistence": ["persistence"],
    "workflows": ["inference", "features", "export", "explanations", "metrics", "runs"],
    "training": ["training"],
    "faces": ["cli", "sklearn", "serve", "viz", "__init__", "__main__"],
}
# What each layer may import from the package, besides itself.
ALLOWED = {
    "core": set(),
    "model": {"core"},
    "data": {"core"},
    "persistence": {"core", "model", "data"},
    "workflows": {"core", "model", "data", "persistence"},
    "training": {"core", "model", "data", "persistence", "workflows"},
    "faces": set(LAYERS),
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(file: Path) -> list[str]:
    """``encoder_clf/model/attention.py`` → ``["model", "attention"]``; an ``__init__`` names its package."""
    parts = list(file.relative_to(PACKAGE).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts


def imported_modules(file: Path, source: str) -> list[tuple[int, str]]:
    """Every module of the package that ``file`` imports, as a dotted name under ``encoder_clf`` (with the line)."""
    here = module_name(file)
    package = here if file.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name[len("encoder_clf."):]) for a in node.names
                      if a.name.startswith("encoder_clf.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("encoder_clf"):
                module = node.module[len("encoder_clf."):] if "." in node.module else ""
            else:
                continue
            # ``from . import x`` and ``from .pkg import module`` import modules by name
            found += [(node.lineno, f"{module}.{a.name}".strip(".")) for a in node.names] if not node.module or \
                (PACKAGE / Path(*module.split("."))).is_dir() else [(node.lineno, module)]
    return found


def layer(dotted: str) -> str | None:
    return LAYER_OF.get(dotted.split(".")[0])


def violations(file: Path, source: str | None = None) -> list[str]:
    """The imports of ``file`` (its text, or ``source``) that reach a layer its own may not import."""
    own = layer(".".join(module_name(file)))
    bad = []
    for line, target in imported_modules(file, file.read_text(encoding="utf-8") if source is None else source):
        target_layer = layer(target)
        if target_layer is not None and target_layer != own and target_layer not in ALLOWED[own]:
            bad.append(f"{file.relative_to(ROOT)}:{line}: {own} imports {target} ({target_layer})")
    return bad


def test_every_module_belongs_to_a_layer():
    unplaced = [str(f.relative_to(ROOT)) for f in package_files() if layer(".".join(module_name(f))) is None]
    assert not unplaced, f"place these in a layer (docs/ARCHITECTURE.md and LAYERS here): {unplaced}"


def test_layers_import_only_from_layers_below():
    files = package_files()
    assert any(f.parent.name == "model" for f in files) and len(files) > 20  # the scan sees the subpackages
    found = [v for f in files for v in violations(f)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("line, target", [("from ..data.tokenization import pad_id", "data.tokenization (data)"),
                                          ("from ..training import loop", "training.loop (training)"),
                                          ("import encoder_clf.cli", "cli (faces)")])
def test_the_rule_catches_a_model_module_importing_upwards(line, target):
    """A positive control: attention.py with one more import, from a layer above, fails the check."""
    file = PACKAGE / "model" / "attention.py"
    source = file.read_text(encoding="utf-8") + f"\n{line}\n"
    assert violations(file, source) == [f"encoder_clf/model/attention.py:{source.count(chr(10))}: model imports "
                                        f"{target}"]


def test_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [str(f.relative_to(PACKAGE)) for f in package_files()
               if f.name != "__init__.py" and str(f.relative_to(PACKAGE)) not in doc]
    assert not missing, f"docs/ARCHITECTURE.md does not mention {missing}"


BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
BANNED_CALLS = {("torch", "load"), ("torch", "save"), ("pickle", "load"), ("pickle", "loads")}
BANNED_TEXT = ("torch.load", "weights_only=False", "allow_pickle=True")


def unpickling(name: str, source: str) -> list[str]:
    """What in one file's ``source`` could unpickle: a banned module, call or argument."""
    found = [f"{name}: {text}" for text in BANNED_TEXT if text in source]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{name}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{name}: from {node.module} import")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and (node.value.id, node.attr) in BANNED_CALLS):
            found.append(f"{name}: {node.value.id}.{node.attr}")
    return found


def unpickling_in(package: Path) -> tuple[list[Path], list[str]]:
    """Every ``.py`` file under ``package``, subpackages included, and what in them could unpickle."""
    files = sorted(package.rglob("*.py"))
    return files, [hit for f in files for hit in unpickling(str(f.relative_to(package.parent)),
                                                             f.read_text(encoding="utf-8"))]


def test_nothing_in_the_package_unpickles():
    """Models and checkpoints load from safetensors and JSON only, in every subpackage."""
    files, found = unpickling_in(PACKAGE)
    assert {f.parent.name for f in files} >= {"encoder_clf", "model", "data", "persistence", "training"}
    assert len(files) > 20
    assert not found, found


@pytest.mark.parametrize("line", ["import pickle", "from joblib import load", "state = torch.load(path)",
                                  "np.load(file, allow_pickle=True)"])
def test_the_unpickling_scan_catches_each_way_in(line):
    assert unpickling("encoder_clf/persistence/x.py", f"import torch\n{line}\n")


def test_the_unpickling_scan_sees_a_file_in_a_subpackage(tmp_path):
    """A positive control: a copy of the package with one subpackage file that unpickles."""
    copy = tmp_path / "encoder_clf"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "persistence" / "sneaky.py").write_text("import pickle\n", encoding="utf-8")
    files, found = unpickling_in(copy)
    assert copy / "persistence" / "sneaky.py" in files
    assert found == ["encoder_clf/persistence/sneaky.py: import pickle"]


def test_the_public_api_names_resolve_to_their_modules():
    for name in encoder_clf.__all__:
        value = getattr(encoder_clf, name)
        if name != "__version__":
            assert value.__module__ == f"encoder_clf.{encoder_clf._WHERE[name]}", name
    assert "train" in dir(encoder_clf)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        encoder_clf.nope  # noqa: B018


def test_python_m_encoder_clf_is_the_command_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "encoder_clf", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: encoder-clf" in done.stdout
