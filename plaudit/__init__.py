"""plaudit: reward models and LLM judges behind one scoring API.

The import name holds the light client side, which installs anywhere (`pip install
plaudit`: pydantic and an HTTP client, no torch): `plaudit.schemas` (the API's request
and response types) and `plaudit.client`. The server side installs beneath it with the
extras: `plaudit.service` and `plaudit.rewardmodels` (`[serve]`), `plaudit.judges`
(`[serve]`, `[judge-local]` for the offline llama.cpp judge) and `plaudit.training`
(`[train]`). Nothing here imports them.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plaudit")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
