"""Every notebook in notebooks/ runs top to bottom without error (executed with nbclient).

The notebooks of one test worker share one Jupyter kernel (starting a kernel and importing torch,
transformers and the package again took most of each notebook's time). Before each notebook the kernel
gets a clean slate: its namespace is reset (``%reset -f``: a name the notebook does not define or import
itself is an error, as in a fresh kernel), the environment variables are those the kernel started with,
open figures are closed and the working directory is a new temporary directory.
"""

from pathlib import Path

import nbformat
import pytest
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

_FRESH = """\
get_ipython().run_line_magic("reset", "-f")
import os, sys
if not hasattr(sys, "_notebook_test_environ"):  # the first notebook of this kernel: its starting environment
    sys._notebook_test_environ = dict(os.environ)
os.environ.clear()
os.environ.update(sys._notebook_test_environ)
os.chdir({cwd!r})
if "matplotlib.pyplot" in sys.modules:
    sys.modules["matplotlib.pyplot"].close("all")
if "torch" in sys.modules:  # a notebook's set_num_threads must not carry into the next (and oversubscribe the cores)
    sys.modules["torch"].set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
del os, sys
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One started python3 kernel manager for this worker's notebooks, shut down at the end."""
    starter = NotebookClient(nbformat.v4.new_notebook(), kernel_name="python3",
                             resources={"metadata": {"path": str(tmp_path_factory.mktemp("kernel"))}})
    km = starter.create_kernel_manager()
    starter.start_new_kernel()
    yield km
    run_sync(km.shutdown_kernel)(now=True)


@pytest.mark.xdist_group("notebooks")  # one worker, one kernel
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, kernel):
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store notebooks without outputs"
    nb.cells.insert(0, nbformat.v4.new_code_cell(_FRESH.format(cwd=str(tmp_path))))
    client = NotebookClient(nb, km=kernel, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_there_are_notebooks():
    assert any(p.name.startswith("01_") for p in NOTEBOOKS)
