"""Typed errors. The library raises these; the CLI turns each into one ``Error: ...`` line and an exit code."""

from __future__ import annotations

from typing import Any

from .redact import redact

AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "RequestExpired",
        "InvalidHTTPAuthHeader",
        "PermissionDeniedError",
    }
)


# Codes worth another try: the official SDK's console retry set (numeric, in ``error_code`` answers) and the
# throttling codes of the v2 envelope.
RETRYABLE_CODES = frozenset({"18", "336100", "500000", "QPSLimitReached", "RequestLimitExceeded", "ServerHighLoad"})


class FtlogError(Exception):
    """Base class of every error ftlog raises on purpose. Its text is redacted (``redact.redact``) when the error is
    made: messages name dataset locations and endpoints, and a URL may carry credentials."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class ConfigError(FtlogError):
    """Missing or invalid configuration: credentials, endpoint, options."""


class DataError(FtlogError):
    """The dataset cannot be read or written."""


class QueryError(FtlogError):
    """SQL that ``ftlog query`` does not run: anything but a read-only query over the views."""


class ApiError(FtlogError):
    """An answer from the Qianfan API that is not a success, or no answer at all."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        action: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        message = redact(message)  # also what collect stores in polls.error_message
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.action = action
        self._retryable = retryable  # None: decided by status and code

    @classmethod
    def from_response(cls, status: int, body: Any, headers: dict[str, str], action: str) -> ApiError:
        """Build the right error type from an error answer (JSON envelope, gateway headers or an HTML page)."""
        code = message = request_id = None
        if isinstance(body, dict):
            code = _text(body.get("code") or body.get("error_code"))
            message = _text(body.get("message") or body.get("error_msg"))
            request_id = _text(body.get("requestId") or body.get("log_id"))
        lowered = {k.lower(): v for k, v in headers.items()}
        code = code or _text(lowered.get("x-bce-error-code"))
        message = message or _text(lowered.get("x-bce-error-message"))
        request_id = request_id or _text(lowered.get("x-bce-request-id"))
        if message is None and isinstance(body, str) and body.strip():
            message = "non-JSON answer: " + " ".join(body.split())[:120]
        elif message is None and body is not None and not isinstance(body, dict):
            message = f"answer is a JSON {type(body).__name__}, not an object"
        text = f"{action}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        kind = AuthError if (code in AUTH_CODES or status in (401, 403)) else ApiError
        return kind(text, status=status, code=code, request_id=request_id, action=action)

    @property
    def retryable(self) -> bool:
        """Throttling and server-side failures are worth another try; everything else will fail the same way."""
        if self._retryable is not None:
            return self._retryable
        if self.code in RETRYABLE_CODES:
            return True
        return self.status is not None and (self.status == 429 or self.status >= 500)


class AuthError(ApiError):
    """Credentials missing, unknown, wrong, expired or without permission."""


class TransportError(ApiError):
    """The API could not be reached, did not answer in time, or its answer broke off."""

    def __init__(self, message: str, *, retryable: bool = True, **kwargs: Any) -> None:
        super().__init__(message, retryable=retryable, **kwargs)


class ListingTruncated(ApiError):
    """A paginated listing stopped at its page or time budget; the items listed before were yielded."""


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)
