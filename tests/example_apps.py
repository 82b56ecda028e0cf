"""The example apps of examples/consumer/ (the image's /app), importable by the tests.

They are scripts that import their sibling kcg_client.py, as Python allows for the
script's own directory; the tests put that directory on sys.path the same way.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

EXAMPLE_APPS = Path(__file__).resolve().parents[1] / "examples" / "consumer"


def load_example_app(name: str) -> ModuleType:
    """The module examples/consumer/<name>.py, e.g. "kcg_client" or "orders_app"."""
    if str(EXAMPLE_APPS) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_APPS))
    return importlib.import_module(name)
