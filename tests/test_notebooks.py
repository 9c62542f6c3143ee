"""Run every notebook in nbs/ top to bottom with nbdev's test runner (cells flagged `slow`/`gpu`/`notest` skipped
unless named in --nbflags). Each notebook is one pytest test, so failures name the notebook and the cell."""
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, request):
    force = request.config.getoption("--nbflags").split()
    skip = get_config().tst_flags.split()
    ok, secs = run_notebook(nb, skip_flags=skip, force_flags=force, showerr=True, basepath=NBS.parent)  # this checkout's facetex
    assert ok, f"{nb.name} failed (see the traceback above)"
