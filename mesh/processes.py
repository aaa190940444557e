"""The command that starts the Python processes mesh runs beside itself (built-in runtimes, adapters)."""

from __future__ import annotations

import sys


def python_module_command(module: str, *args: str) -> list[str]:
    """`python -P -m module args` with this interpreter.

    `-m` alone puts the working directory first on sys.path, where a folder named like one of mesh's packages (a
    checkout called `mesh`, an unrelated `adapters/`) would be imported as a namespace package before the installed
    one. `-P` (Python 3.11+) leaves the working directory out, so a child starts the same from any directory.
    """
    return [sys.executable, "-P", "-m", module, *args]
