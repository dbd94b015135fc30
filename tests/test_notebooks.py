"""The analysis notebooks in ``notebooks/``: saved clean (fast) and executed end to end (slow).

The slow test runs every notebook with ``SAFETY_PROBES_FAST=1`` through nbclient in a
kernel that runs *this* interpreter (the project's virtual environment), in a temporary
working directory, and fails on the first cell error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
REQUIRED = (
    "01_recording_and_probing.ipynb",
    "02_refusal_direction.ipynb",
    "03_gated_defense.ipynb",
)
KERNEL = "python3"
# jupyter_client replaces these argv[0] values with sys.executable when it starts a kernel
_PYTHON_ALIASES = {
    "python",
    f"python{sys.version_info[0]}",
    "python{}.{}".format(*sys.version_info[:2]),
}


def _ids(p: Path) -> str:
    return p.stem


def test_notebooks__all_present():
    names = {p.name for p in NOTEBOOKS}
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, f"missing notebooks: {missing}"
    readme = (NOTEBOOK_DIR / "README.md").read_text(encoding="utf-8")
    for p in NOTEBOOKS:
        assert p.name in readme, f"notebooks/README.md does not describe {p.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook__saved_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name}: cell {i} has stored outputs; clear them"
        assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook__reads_the_fast_switch(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'FAST = os.environ.get("SAFETY_PROBES_FAST", "0") == "1"' in code


def _kernel_runs_this_python() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return False
    exe = spec.argv[0] if spec.argv else ""
    if exe in _PYTHON_ALIASES:
        return True
    try:
        return Path(exe).resolve() == Path(sys.executable).resolve()
    except OSError:
        return False


@pytest.fixture(scope="session")
def venv_kernel() -> str:
    """The kernel name, after making sure it starts this interpreter (installs it if not)."""
    if not _kernel_runs_this_python():
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL],
            check=True, capture_output=True,
        )  # fmt: skip
    if not _kernel_runs_this_python():
        pytest.fail(f"the {KERNEL!r} kernelspec does not run {sys.executable} (a user-level "
                    "kernelspec shadows the one installed into the virtual environment)")  # fmt: skip
    return KERNEL


@pytest.mark.slow
def test_notebook_kernel__is_the_venv_interpreter(venv_kernel, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.prefix)")]
    NotebookClient(nb, kernel_name=venv_kernel, timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    printed = nb.cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.prefix).resolve()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook__runs_in_fast_mode(path, venv_kernel, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("SAFETY_PROBES_FAST", "1")  # the kernel inherits the environment
    scratch = tmp_path / "tmp"  # the notebooks' tempfile folders land here, not in /tmp
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=venv_kernel, timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    errors = [
        f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
        for i, c in enumerate(nb.cells) if c.cell_type == "code"
        for o in c.outputs if o.output_type == "error"
    ]  # fmt: skip
    assert not errors, f"{path.name}: {errors}"
