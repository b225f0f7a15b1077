"""The notebooks run clean top to bottom with small parameters, and are committed without outputs.

Parameters are injected the way papermill does it: a cell tagged ``injected-parameters`` right after
the cell tagged ``parameters``, so the notebooks themselves keep plain assignments.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import SST2

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TRAINING = dict(TRAIN_ROWS=600, EVAL_ROWS=200, EPOCHS=1, D_MODEL=32, N_LAYERS=1, VOCAB_SIZE=2000)
SST2_DATA = {"DATA": "sst2_excerpt"}
SMALL = {  # notebook -> (parameters, {parameter: the fixture giving its data path}, where it writes)
    "01_attention_rules": ({}, {}, None),
    "02_train_and_evaluate": (TRAINING, SST2_DATA, "RUN_DIR"),
    "03_features_and_attention": ({**TRAINING, "EXAMPLES": 1}, SST2_DATA, "OUT_DIR"),
    "04_pairs_multilabel_regression": ({**TRAINING, "TRAIN_ROWS": 400, "EVAL_ROWS": 150, "VOCAB_SIZE": 1000,
                                        "NGRAM_BUCKETS": 1000}, {"DATA_ROOT": "task_datasets"}, "OUT_DIR"),
}
TASK_DATASETS = ("mrpc", "goemotions", "stsb")  # what notebook 04 reads from under SST2's parent folder


def test_every_notebook_is_covered_and_committed_without_outputs():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(SMALL)
    for name in SMALL:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be the parameters"
        assert all(not cell.outputs and cell.execution_count is None for cell in code), f"{name} has outputs"


def execute(path: Path, parameters: dict) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, injected)
    client = NotebookClient(notebook, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails
    return notebook


@pytest.fixture(scope="module")
def sst2_excerpt(sst2_dir, tmp_path_factory):
    """The first 1,000 training and 300 validation and test rows of SST-2: reading all 67,349 takes seconds."""
    root = tmp_path_factory.mktemp("sst2")
    for name, rows in (("train", 1000), ("validation", 300), ("test", 300)):
        lines = (sst2_dir / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[: rows + 1]
        (root / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def task_datasets() -> Path:
    """The folder of MRPC, GoEmotions and STS-B (the notebook samples them itself: they read in about a second)."""
    root = SST2.parent
    missing = [name for name in TASK_DATASETS if not (root / name / "train.tsv").is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found under {root}")
    return root


@pytest.mark.parametrize("name", list(SMALL))
def test_notebook_runs_clean(name, request, tmp_path, monkeypatch):
    parameters, data, out_key = SMALL[name]
    for key, fixture in data.items():  # the fixture skips when its data set is absent
        parameters = {**parameters, key: str(request.getfixturevalue(fixture))}
    if out_key:
        parameters = {**parameters, out_key: str(tmp_path / "out")}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread beats two contended ones
    notebook = execute(NOTEBOOKS / f"{name}.ipynb", parameters)
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{name} showed no figure"
    if out_key:
        assert any((tmp_path / "out").rglob("model.safetensors")), f"{name} saved no model"
