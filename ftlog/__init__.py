"""ftlog: history, comparison and reports for Baidu Qianfan fine-tuning tasks.

>>> import ftlog
>>> con = ftlog.connect("data")  # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from .client import Credentials, QianfanClient, load_credentials
from .collect import RoundResult, Selection, collect_round
from .errors import ApiError, AuthError, ConfigError, DataError, FtlogError, TransportError
from .store import Dataset
from .views import connect

try:
    __version__ = version("ftlog")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0"

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
