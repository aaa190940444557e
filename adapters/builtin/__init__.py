"""The built-in Python runtime: one OS process per instance serving the SPI and the v2 inference API.

Run it with ``python -m adapters.builtin --port 0 --port-file PATH ...`` (see ``settings.py`` for the flags).
"""
