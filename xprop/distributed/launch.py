"""Finding the launcher."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["find_mpiexec"]


def find_mpiexec() -> str | None:
    """The ``mpiexec`` next to this Python (the mpich wheel puts it there), else on PATH."""
    beside = Path(sys.executable).parent / ("mpiexec.exe" if os.name == "nt" else "mpiexec")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")
