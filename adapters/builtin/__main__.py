"""`python -m adapters.builtin`: run one built-in runtime instance (flags in adapters/builtin/settings.py)."""

from __future__ import annotations

import asyncio

from adapters.builtin.server import serve
from adapters.builtin.settings import parse_args
from mesh import logs


def main() -> None:
    settings = parse_args()
    logs.configure(
        settings.log_level,
        settings.log_format,
        text_format=f"%(asctime)s %(levelname)s builtin[{settings.instance_id}] %(name)s: %(message)s",
        static_fields={"runtime": settings.instance_id},
    )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
