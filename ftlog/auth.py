"""BCE ``bce-auth-v1`` request signing (client side) and verification (simulator side).

One implementation serves both, so the simulator checks exactly what the client produces and what the official
SDKs send (unsorted signedHeaders, explicit lists, the default header set).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from .errors import AuthError

PREFIX = "bce-auth-v1"
DEFAULT_SIGNED = ("host", "content-length", "content-type", "content-md5")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CLOCK_SKEW = timedelta(minutes=30)  # BCE accepts a signature from 30 minutes before its timestamp


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """Percent-encode UTF-8 bytes, keeping only ``A-Z a-z 0-9 - . _ ~`` (and ``/`` when asked)."""
    return quote(value, safe="/~" if keep_slash else "~")


def canonical_uri(path: str) -> str:
    return uri_encode(path or "/", keep_slash=True)


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    items = sorted(f"{uri_encode(key)}={uri_encode(value)}" for key, value in params if key.lower() != "authorization")
    return "&".join(items)


def _select_headers(headers: Mapping[str, str], signed: list[str]) -> list[tuple[str, str]]:
    lowered = {name.lower(): str(value).strip() for name, value in headers.items()}
    if signed:
        chosen = [(name, lowered[name]) for name in signed if name in lowered]
    else:
        chosen = [
            (name, value) for name, value in lowered.items() if name in DEFAULT_SIGNED or name.startswith("x-bce-")
        ]
    return [(name, value) for name, value in chosen if value]


def canonical_headers(headers: Mapping[str, str], signed: list[str]) -> str:
    lines = sorted(f"{uri_encode(name)}:{uri_encode(value)}" for name, value in _select_headers(headers, signed))
    return "\n".join(lines)


def _hex_hmac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def signing_key(secret_key: str, auth_prefix: str) -> str:
    """Step 2 of the algorithm: the hex HMAC of the auth prefix, itself the key of the final HMAC."""
    return _hex_hmac(secret_key.encode(), auth_prefix)


def canonical_request(
    method: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str], signed: list[str]
) -> str:
    return "\n".join([method.upper(), canonical_uri(path), canonical_query(query), canonical_headers(headers, signed)])


def signature(
    secret_key: str,
    auth_prefix: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed: list[str],
) -> str:
    key = signing_key(secret_key, auth_prefix)
    return _hex_hmac(key.encode(), canonical_request(method, path, query, headers, signed))


def sign(
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    *,
    timestamp: datetime,
    expiration: int = 1800,
    signed_headers: list[str] | None = None,
) -> str:
    """Return the ``Authorization`` header value for one request.

    ``signed_headers=None`` signs ``host`` and ``x-bce-date`` (what most clients do); ``[]`` means BCE's default
    set (host, content-*, every x-bce-* header), written as an empty field.
    """
    names = ["host", "x-bce-date"] if signed_headers is None else [h.lower() for h in signed_headers]
    auth_prefix = f"{PREFIX}/{access_key}/{timestamp.astimezone(timezone.utc).strftime(TIME_FORMAT)}/{expiration}"
    sig = signature(secret_key, auth_prefix, method, path, query, headers, names)
    return f"{auth_prefix}/{';'.join(names)}/{sig}"


def verify(
    authorization: str | None,
    secret_for: Callable[[str], str | None],
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    *,
    now: datetime,
) -> str:
    """Check an ``Authorization`` header; return the access key, or raise :class:`AuthError` with BCE's code."""
    if not authorization:
        raise AuthError("Access denied: the request carries no Authorization header.", code="AccessDenied", status=403)
    parts = authorization.strip().split("/")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise AuthError("The HTTP authorization header is invalid.", code="InvalidHTTPAuthHeader", status=400)
    _, access_key, stamp, expiration_text, signed_text, given = parts
    try:
        timestamp = datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=timezone.utc)
        expiration = int(expiration_text)
    except ValueError:
        raise AuthError("The HTTP authorization header is invalid.", code="InvalidHTTPAuthHeader", status=400) from None
    secret_key = secret_for(access_key)
    if secret_key is None:
        raise AuthError(
            "The Access Key ID you provided does not exist in our records.",
            code="InvalidAccessKeyId",
            status=403,
        )
    if not (timestamp - CLOCK_SKEW <= now <= timestamp + timedelta(seconds=expiration)):
        raise AuthError(f"Request has expired. Timestamp date is {stamp}.", code="RequestExpired", status=400)
    signed = [name.strip().lower() for name in signed_text.split(";") if name.strip()]
    auth_prefix = "/".join(parts[:4])
    expected = signature(secret_key, auth_prefix, method, path, query, headers, signed)
    # Bytes, because compare_digest raises TypeError on a non-ASCII str and headers arrive as latin-1 text.
    if not hmac.compare_digest(expected.encode(), given.lower().encode("utf-8", "replace")):
        raise AuthError(
            "The request signature we calculated does not match the signature you provided. "
            "Check your Secret Access Key and signing method.",
            code="SignatureDoesNotMatch",
            status=400,
        )
    return access_key
