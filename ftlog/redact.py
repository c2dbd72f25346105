"""Text ftlog shows but did not write itself: credentials taken out of URLs, control characters made visible.

``redact`` is applied wherever a dataset location, an API endpoint or a webhook URL can be shown: error messages
(every :class:`~ftlog.errors.FtlogError`), ``ftlog check`` output, the report, log lines and ``polls.error_message``.
``printable`` keeps text from the API (job names, error messages) from driving the terminal it is printed on.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# ``scheme://user:password@`` anywhere in a text. Up to the last "@" before a blank or a quote: a password may
# hold "@" or "/" typed without percent-encoding, and showing too little of a URL is harmless.
_USERINFO = re.compile(r"""(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)[^\s'"<>]*@""")
# Every query (or fragment) parameter value: s3://bucket/prefix?secret_key=..., webhooks' ?access_token=... or
# ?key=..., and the path-only URLs that requests' exceptions quote ("url: /hook?token=...").
_PARAMETER = re.compile(r"""(?P<name>[?&#][^=&#\s'"<>]{1,64}=)(?P<value>[^&#\s'"<>]*)""")
_HARMLESS = frozenset({"Action"})  # the Qianfan action: says which call failed, and is no secret
# C0 controls (ESC starts terminal escape sequences, CR rewrites the line), DEL, C1 controls (U+009B is a CSI on
# some terminals), the Unicode line separators and the bidi marks, embeddings, overrides and isolates, which make
# text display in another order than it reads.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def redact(text: str) -> str:
    """``text`` with the user information of every URL and the values of query parameters masked.

    >>> redact("s3://AKID:SECRET@bucket/prefix?region=x&secret_key=SECRET")
    's3://***@bucket/prefix?region=***&secret_key=***'
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _PARAMETER.sub(lambda m: m[0] if m["name"][1:-1] in _HARMLESS else f"{m['name']}{MASK}", text)


def printable(text: str, keep: str = "") -> str:
    """``text`` with every control character but those in ``keep`` written as its Python escape: ESC as the four
    characters ``\\x1b``, a line break as ``\\n``, U+202E as ``\\u202e``."""
    return CONTROL.sub(lambda m: m[0] if m[0] in keep else m[0].encode("unicode_escape").decode("ascii"), text)


class RedactingFilter(logging.Filter):
    """A log handler filter that redacts each record's message (and traceback) and makes it printable."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(redact(record.getMessage()), keep="\n"), None
        if record.exc_info and not record.exc_text:
            record.exc_text = printable(redact(logging.Formatter().formatException(record.exc_info)), keep="\n")
        return True
