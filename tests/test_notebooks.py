"""The notebooks run clean top to bottom with small parameters, and are committed without outputs.

Parameters are injected the way papermill does it: a cell tagged ``injected-parameters`` right after
the cell tagged ``parameters``, so the notebooks themselves keep plain assignments.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TRAINING = dict(TRAIN_ROWS=600, EVAL_ROWS=200, EPOCHS=1, D_MODEL=32, N_LAYERS=1, VOCAB_SIZE=2000)
SMALL = {  # notebook -> (parameters, whether it reads SST-2, where it writes)
    "01_attention_rules": ({}, False, None),
    "02_train_and_evaluate": (TRAINING, True, "RUN_DIR"),
    "03_features_and_attention": ({**TRAINING, "EXAMPLES": 1}, True, "OUT_DIR"),
}


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


@pytest.mark.parametrize("name", list(SMALL))
def test_notebook_runs_clean(name, request, tmp_path, monkeypatch):
    parameters, reads_sst2, out_key = SMALL[name]
    if reads_sst2:  # skips when the data set is absent
        parameters = {**parameters, "DATA": str(request.getfixturevalue("sst2_excerpt"))}
    if out_key:
        parameters = {**parameters, out_key: str(tmp_path / "out")}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread beats two contended ones
    notebook = execute(NOTEBOOKS / f"{name}.ipynb", parameters)
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{name} showed no figure"
    if out_key:
        assert any((tmp_path / "out").rglob("model.safetensors")), f"{name} saved no model"
