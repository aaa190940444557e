"""`python -m adapters.builtin`: run one built-in runtime instance (flags in adapters/builtin/settings.py)."""

from __future__ import annotations

import asyncio
import logging

from adapters.builtin.server import serve
from adapters.builtin.settings import parse_args


def main() -> None:
    settings = parse_args()
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s builtin[{settings.instance_id}] %(name)s: %(message)s",
    )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
