"""Shared pytest setup: notebooks and tests run headless and single-threaded per worker (2-core CI)."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser):
    parser.addoption("--nbflags", default="", help="space-separated notebook flags to run too, e.g. 'slow gpu'")
