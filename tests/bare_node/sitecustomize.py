"""Imported at start-up by every Python process that has this folder on PYTHONPATH (tests/scripts/test_gpu_check.py
puts it there): the top-level modules named in BARE_NODE_MISSING (comma-separated) are then not found, as on a bare
GPU node whose Python lacks them (`import` fails, `importlib.util.find_spec` says None). It checks that the GPU
check needs nothing beyond what such a node has and what `scripts/gpu_carry.sh` carries."""
import os
import sys

MISSING = {name for name in os.environ.get("BARE_NODE_MISSING", "").split(",") if name}


class _Hiding:
    """Wraps one of Python's module finders: the missing modules are not found, everything else as before."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in MISSING:
            return None
        return self.finder.find_spec(fullname, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


if MISSING:
    sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
