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
