"""Shared set-up for the Upper Layer tests (PS3.8): make ``pacsnode`` importable from src/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# The venv may not have pacsnode installed (no `pip install -e .` yet): fall back to
# the src layout so `.venv/bin/pytest tests/ul` works from a bare checkout.
if importlib.util.find_spec("pacsnode") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
