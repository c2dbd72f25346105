"""ftlog: history, comparison and reports for Baidu Qianfan fine-tuning tasks.

>>> import ftlog
>>> con = ftlog.connect("data")  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import Credentials, load_credentials
from .errors import ApiError, AuthError, ConfigError, DataError, FtlogError, TransportError

if TYPE_CHECKING:
    from .client import QianfanClient
    from .collect import RoundResult, Selection, collect_round
    from .store import Dataset
    from .views import connect

    __version__: str

# Loaded on first use, so that `import ftlog` (and every `ftlog` command) does not pay for pandas, pyarrow,
# duckdb and requests up front: name -> the module that defines it.
_LAZY = {
    "QianfanClient": "client",
    "RoundResult": "collect",
    "Selection": "collect",
    "collect_round": "collect",
    "Dataset": "store",
    "connect": "views",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("ftlog")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
            value = "0.0.0"
    elif name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups find it without calling this again
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "Credentials",
    "DataError",
    "Dataset",
    "FtlogError",
    "QianfanClient",
    "RoundResult",
    "Selection",
    "TransportError",
    "__version__",
    "collect_round",
    "connect",
    "load_credentials",
]
