"""Typed errors. The library raises these; the CLI turns each into one ``Error: ...`` line and an exit code."""

from __future__ import annotations

from typing import Any

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


class FtlogError(Exception):
    """Base class of every error ftlog raises on purpose."""


class ConfigError(FtlogError):
    """Missing or invalid configuration: credentials, endpoint, options."""


class DataError(FtlogError):
    """The dataset cannot be read or written."""


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
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.action = action

    @classmethod
    def from_response(cls, status: int, body: Any, headers: dict[str, str], action: str) -> ApiError:
        """Build the right error type from an error answer (JSON envelope, gateway headers or an HTML page)."""
        code = message = request_id = None
        if isinstance(body, dict):
            code = _text(body.get("code") or body.get("error_code"))
            message = _text(body.get("message") or body.get("error_msg"))
            request_id = _text(body.get("requestId"))
        lowered = {k.lower(): v for k, v in headers.items()}
        code = code or _text(lowered.get("x-bce-error-code"))
        message = message or _text(lowered.get("x-bce-error-message"))
        request_id = request_id or _text(lowered.get("x-bce-request-id"))
        if message is None and isinstance(body, str) and body.strip():
            message = "non-JSON answer: " + " ".join(body.split())[:120]
        text = f"{action}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        kind = AuthError if (code in AUTH_CODES or status in (401, 403)) else ApiError
        return kind(text, status=status, code=code, request_id=request_id, action=action)

    @property
    def retryable(self) -> bool:
        """Throttling and server-side failures are worth another try; everything else will fail the same way."""
        return self.status is not None and (self.status == 429 or self.status >= 500)


class AuthError(ApiError):
    """Credentials missing, unknown, wrong, expired or without permission."""


class TransportError(ApiError):
    """The API could not be reached or did not answer in time."""

    @property
    def retryable(self) -> bool:
        return True


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)
