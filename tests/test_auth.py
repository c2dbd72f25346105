"""bce-auth-v1: the official vectors of the spec, canonicalisation rules, and every way verify() says no."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ftlog import auth
from ftlog.errors import AuthError

AK = "a" * 32
SK = "b" * 32

# V1/V2: the doc's PUT example.
V1_TIME = datetime(2015, 4, 27, 8, 23, 49, tzinfo=timezone.utc)
V1_PATH = "/v1/test/myfolder/readme.txt"
V1_QUERY = [("partNumber", "9"), ("uploadId", "a44cc9bab11cbd156984767aad637851")]
V1_HEADERS = {
    "Host": "bj.bcebos.com",
    "Date": "Mon, 27 Apr 2015 16:23:49 +0800",
    "Content-Type": "text/plain",
    "Content-Length": "8",
    "Content-Md5": "NFzcPqhviddjRNnSOGo4rw==",
    "x-bce-date": "2015-04-27T08:23:49Z",
}
V1_PREFIX = f"bce-auth-v1/{AK}/2015-04-27T08:23:49Z/1800"
V1_SIG = "d74a04362e6a848f5b39b15421cb449427f419c95a480fd6b8cf9fc783e2999e"
V2_SIG = "1b8de5a23a56eef657c69f94c621e7acd227d049a4ba577f537d5e5cebf0cf32"

# V3..V5: a Qianfan-shaped POST as the official Python SDK sends it.
QF_TIME = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
QF_PATH = "/v2/finetuning"
QF_QUERY = [("Action", "DescribeFineTuningTask")]
QF_HEADERS = {
    "Host": "qianfan.baidubce.com",
    "Content-Type": "application/json",
    "request-source": "qianfan_py_sdk_v0.4.12.3",
    "x-bce-date": "2024-06-01T12:00:00Z",
    "Content-Length": "31",
}
SDK_ORDER = ["host", "request-source", "x-bce-date", "content-type"]


def test_v1_signing_key_canonical_request_and_authorization() -> None:
    assert auth.signing_key(SK, V1_PREFIX) == "1d5ce5f464064cbee060330d973218821825ac6952368a482a592e6615aef479"
    assert auth.canonical_request("PUT", V1_PATH, V1_QUERY, V1_HEADERS, []) == (
        "PUT\n"
        "/v1/test/myfolder/readme.txt\n"
        "partNumber=9&uploadId=a44cc9bab11cbd156984767aad637851\n"
        "content-length:8\n"
        "content-md5:NFzcPqhviddjRNnSOGo4rw%3D%3D\n"
        "content-type:text%2Fplain\n"
        "host:bj.bcebos.com\n"
        "x-bce-date:2015-04-27T08%3A23%3A49Z"
    )
    header = auth.sign(AK, SK, "PUT", V1_PATH, V1_QUERY, V1_HEADERS, timestamp=V1_TIME, signed_headers=[])
    assert header == f"{V1_PREFIX}//{V1_SIG}"


def test_v1_explicit_default_list_gives_the_same_signature() -> None:
    listed = ["content-length", "content-md5", "content-type", "host", "x-bce-date"]
    header = auth.sign(AK, SK, "PUT", V1_PATH, V1_QUERY, V1_HEADERS, timestamp=V1_TIME, signed_headers=listed)
    assert header == f"{V1_PREFIX}/{';'.join(listed)}/{V1_SIG}"


def test_v2_host_and_date_only() -> None:
    expected = f"{V1_PREFIX}/host;x-bce-date/{V2_SIG}"
    assert auth.sign(AK, SK, "PUT", V1_PATH, V1_QUERY, V1_HEADERS, timestamp=V1_TIME) == expected
    explicit = ["host", "x-bce-date"]
    assert auth.sign(AK, SK, "PUT", V1_PATH, V1_QUERY, V1_HEADERS, timestamp=V1_TIME, signed_headers=explicit) == (
        expected
    )


@pytest.mark.parametrize(
    ("expiration", "signed", "field", "key", "sig"),
    [
        pytest.param(
            300,
            SDK_ORDER,
            "host;request-source;x-bce-date;content-type",
            "2fd1fca9b654c95dcd493a8abcba148b5f463fe3581b04265ad8b2a045f8025a",
            "55a3a4b2173d5d2b55d1bc9a03764476cbee2e30abcaf1ba97bba08490255b79",
            id="V3-sdk-order",
        ),
        pytest.param(
            300,
            sorted(SDK_ORDER),
            "content-type;host;request-source;x-bce-date",
            "2fd1fca9b654c95dcd493a8abcba148b5f463fe3581b04265ad8b2a045f8025a",
            "55a3a4b2173d5d2b55d1bc9a03764476cbee2e30abcaf1ba97bba08490255b79",
            id="V3-sorted",
        ),
        pytest.param(
            1800,
            None,
            "host;x-bce-date",
            "40e9ded13d33c284e9915e6f79370e4d61ed1f61fb3cbf917c9326fbcf4fb74a",
            "81b3b9dcaaa0d1d3ad0e89feb2b35d8c8e4348711dbecdfe1144e91edd01ff77",
            id="V4",
        ),
        pytest.param(
            1800,
            [],
            "",
            "40e9ded13d33c284e9915e6f79370e4d61ed1f61fb3cbf917c9326fbcf4fb74a",
            "c026d2ee4775c180598b865fdba6ebfc78ab8023c830bf6a78e64d8883f39d32",
            id="V5-default-set",
        ),
    ],
)
def test_qianfan_vectors(expiration: int, signed: list[str] | None, field: str, key: str, sig: str) -> None:
    prefix = f"bce-auth-v1/{AK}/2024-06-01T12:00:00Z/{expiration}"
    assert auth.signing_key(SK, prefix) == key
    header = auth.sign(
        AK, SK, "POST", QF_PATH, QF_QUERY, QF_HEADERS, timestamp=QF_TIME, expiration=expiration, signed_headers=signed
    )
    assert header == f"{prefix}/{field}/{sig}"


def test_v3_canonical_headers() -> None:
    assert auth.canonical_headers(QF_HEADERS, SDK_ORDER) == (
        "content-type:application%2Fjson\n"
        "host:qianfan.baidubce.com\n"
        "request-source:qianfan_py_sdk_v0.4.12.3\n"
        "x-bce-date:2024-06-01T12%3A00%3A00Z"
    )


def test_v5_default_set_leaves_out_request_source() -> None:
    lines = auth.canonical_headers(QF_HEADERS, []).split("\n")
    assert [line.split(":")[0] for line in lines] == ["content-length", "content-type", "host", "x-bce-date"]


def test_canonical_query_sorts_encoded_pairs_and_drops_authorization() -> None:
    query = [("text", ""), ("text1", "测试"), ("text10", "test")]
    assert auth.canonical_query(query) == "text10=test&text1=%E6%B5%8B%E8%AF%95&text="
    assert auth.canonical_query([("b", "1"), ("Authorization", "x"), ("a", "x y/z*")]) == "a=x%20y%2Fz%2A&b=1"


def test_canonical_uri_encodes_utf8_and_keeps_slashes() -> None:
    assert auth.canonical_uri("/example/测试") == "/example/%E6%B5%8B%E8%AF%95"
    assert auth.canonical_uri("/a b/~x-y_z.") == "/a%20b/~x-y_z."
    assert auth.canonical_uri("") == "/"


def test_empty_header_values_are_not_signed() -> None:
    headers = {"Host": "h", "x-bce-date": "2024-06-01T12:00:00Z", "x-bce-empty": "   ", "Content-Type": ""}
    assert auth.canonical_headers(headers, []) == "host:h\nx-bce-date:2024-06-01T12%3A00%3A00Z"
    assert auth.canonical_headers(headers, ["host", "x-bce-empty", "content-type"]) == "host:h"


# -- verify ----------------------------------------------------------------------------------------------------


def _signed_request(
    *, signed: list[str] | None = None, secret: str = SK, access: str = AK, expiration: int = 300
) -> tuple[str, dict[str, str]]:
    headers = dict(QF_HEADERS)
    header = auth.sign(
        access,
        secret,
        "POST",
        QF_PATH,
        QF_QUERY,
        headers,
        timestamp=QF_TIME,
        expiration=expiration,
        signed_headers=signed,
    )
    return header, headers


def _verify(header: str | None, headers: dict[str, str], now: datetime = QF_TIME) -> str:
    return auth.verify(header, {AK: SK}.get, "POST", QF_PATH, QF_QUERY, headers, now=now)


@pytest.mark.parametrize("signed", [None, [], SDK_ORDER], ids=["host-date", "default", "sdk-unsorted"])
def test_verify_accepts_what_sign_produces(signed: list[str] | None) -> None:
    header, headers = _signed_request(signed=signed)
    assert _verify(header, headers) == AK


def test_verify_accepts_the_v3_header_verbatim() -> None:
    header = (
        f"bce-auth-v1/{AK}/2024-06-01T12:00:00Z/300/host;request-source;x-bce-date;content-type/"
        "55a3a4b2173d5d2b55d1bc9a03764476cbee2e30abcaf1ba97bba08490255b79"
    )
    assert _verify(header, dict(QF_HEADERS)) == AK


def _rejection(header: str | None, headers: dict[str, str], now: datetime = QF_TIME) -> AuthError:
    with pytest.raises(AuthError) as caught:
        _verify(header, headers, now)
    return caught.value


def test_verify_rejects_wrong_secret() -> None:
    error = _rejection(*_signed_request(secret="not-the-secret"))
    assert (error.code, error.status) == ("SignatureDoesNotMatch", 400)


def test_verify_rejects_a_tampered_header_value() -> None:
    header, headers = _signed_request()
    headers["Host"] = "evil.example.com"
    assert _rejection(header, headers).code == "SignatureDoesNotMatch"


def test_verify_rejects_unknown_access_key() -> None:
    error = _rejection(*_signed_request(access="AK-nobody"))
    assert (error.code, error.status) == ("InvalidAccessKeyId", 403)


def test_verify_time_window() -> None:
    header, headers = _signed_request(expiration=300)
    assert _verify(header, headers, QF_TIME + timedelta(seconds=300)) == AK
    late = _rejection(header, headers, QF_TIME + timedelta(seconds=301))
    assert (late.code, late.status) == ("RequestExpired", 400)
    # A client clock up to 30 minutes ahead of the server is tolerated, one further ahead is not.
    assert _verify(header, headers, QF_TIME - timedelta(minutes=30)) == AK
    early = _rejection(header, headers, QF_TIME - timedelta(minutes=30, seconds=1))
    assert early.code == "RequestExpired"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        f"bce-auth-v1/{AK}/2024-06-01T12:00:00Z/300/host",
        f"bce-auth-v2/{AK}/2024-06-01T12:00:00Z/300/host/abc",
        f"bce-auth-v1/{AK}/yesterday/300/host/abc",
        f"bce-auth-v1/{AK}/2024-06-01T12:00:00Z/soon/host/abc",
    ],
)
def test_verify_rejects_malformed_header(header: str) -> None:
    error = _rejection(header, dict(QF_HEADERS))
    assert (error.code, error.status) == ("InvalidHTTPAuthHeader", 400)


def test_verify_rejects_non_ascii_signature_as_mismatch() -> None:
    header, headers = _signed_request()
    assert _rejection(header[:-1] + "é", headers).code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("header", [None, ""])
def test_verify_rejects_missing_header(header: str | None) -> None:
    error = _rejection(header, dict(QF_HEADERS))
    assert (error.code, error.status) == ("AccessDenied", 403)
