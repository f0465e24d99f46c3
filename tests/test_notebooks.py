"""The notebooks run top to bottom on the bundled tiny model (and are stored without outputs), and every cell that
ends in a dense.viz figure shows it as a PNG."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_and_are_stripped():
    assert len(NOTEBOOKS) >= 4
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name}: outputs not stripped"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figure_cells = [c for c in nb.cells if c.cell_type == "code" and _ends_in_figure(c.source)]
    assert figure_cells, f"{path.name}: no figure cell"  # every notebook shows at least one
    for cell in figure_cells:
        data = [o.get("data", {}) for o in cell.outputs if o.output_type in ("execute_result", "display_data")]
        assert any("image/png" in d for d in data), f"{path.name} {cell.id}: no figure shown ({data})"
        assert not any(d.get("text/plain", "").startswith("<Figure") and "image/png" not in d for d in data)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "np.int64" not in printed and "np.float64" not in printed  # plain numbers for people



def _ends_in_figure(source: str) -> bool:
    """The cell's last statement is a dense.viz call (its value is what Jupyter displays)."""
    import ast

    body = ast.parse(source).body
    if not body or not isinstance(body[-1], ast.Expr) or not isinstance(body[-1].value, ast.Call):
        return False
    func = body[-1].value.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "viz"


@pytest.mark.slow
def test_progress_bars_in_a_kernel_do_not_warn(tmp_path, monkeypatch):
    """dense's bars in Jupyter: the widget where ipywidgets is installed, else plain text, never tqdm.auto's
    "IProgress not found" warning (the dev extra has no ipywidgets)."""
    from nbclient import NotebookClient

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from dense._progress import tqdm\nfrom dense.encoder import tqdm as used\nassert used is tqdm\n"
        "print(sum(tqdm(range(3), desc='bar')))")])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    text = "".join(o.get("text", "") for o in outputs)
    assert "3" in text and "IProgress" not in text and "TqdmWarning" not in text, text


def test_the_progress_class_follows_ipywidgets(monkeypatch):
    import importlib
    import importlib.util

    import tqdm.auto
    import tqdm.std

    import dense._progress as progress

    real = importlib.util.find_spec
    for present, expected in ((False, tqdm.std.tqdm), (True, tqdm.auto.tqdm)):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, present=present: (object() if present else None) if name == "ipywidgets"
                            else real(name, *a))
        assert importlib.reload(progress).tqdm is expected
    monkeypatch.undo()
    importlib.reload(progress)
