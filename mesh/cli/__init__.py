"""The `mesh` command: thin — parse, call the library or the management API, print.

One module per group of commands: run.py (serve, controller), models.py, vmodels.py, inspect.py (status, infer);
common.py what they share; app.py the parser and running a command.
"""

from mesh.cli.app import main

__all__ = ["main"]
