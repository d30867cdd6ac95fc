"""The SigV4 verifier against AWS's published Signature Version 4 test suite (the signed
requests of docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html, used here as
data), and against botocore's signer over generated paths, queries and headers."""

import calendar
import hashlib
import string
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from ebsfs.server.sigv4 import AuthFailure, Verifier, canonical_query, canonical_uri

SUITE_KEY = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_DATE = "20150830T123600Z"
SUITE_NOW = float(calendar.timegm((2015, 8, 30, 12, 36, 0, 0, 0, 0)))
SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmx"
    "fpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0K"
    "PkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZb"
    "qBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
)
UNRESERVED = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# name: (method, target as sent, extra headers, signed header names, body, signature)
VECTORS: dict[str, tuple[str, str, dict[str, str], str, bytes, str]] = {
    "get-vanilla-query-order-key-case": (
        "GET", "/?Param2=value2&Param1=value1", {}, "host;x-amz-date", b"",
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    "get-vanilla-empty-query-key": (
        "GET", "/?Param1=value1", {}, "host;x-amz-date", b"",
        "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb"),
    "get-vanilla-query-unreserved": (
        "GET", f"/?{UNRESERVED}={UNRESERVED}", {}, "host;x-amz-date", b"",
        "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    "get-unreserved": (
        "GET", f"/{UNRESERVED}", {}, "host;x-amz-date", b"",
        "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    "get-utf8": (
        "GET", "/\u1234", {}, "host;x-amz-date", b"",
        "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    "get-space": (
        "GET", "/example space/", {}, "host;x-amz-date", b"",
        "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
    "get-slash-dot-slash": (
        "GET", "/./", {}, "host;x-amz-date", b"",
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    "get-relative-relative": (
        "GET", "/example1/example2/../..", {}, "host;x-amz-date", b"",
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    "get-header-key-duplicate": (
        # Repeated headers arrive joined by commas, in order.
        "GET", "/", {"my-header1": "value2,value2,value1"}, "host;my-header1;x-amz-date", b"",
        "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"),
    "get-header-value-trim": (
        "GET", "/", {"my-header1": "value1", "my-header2": '"a   b   c"'},
        "host;my-header1;my-header2;x-amz-date", b"",
        "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    "post-x-www-form-urlencoded": (
        "POST", "/", {"content-type": "application/x-www-form-urlencoded"},
        "content-type;host;x-amz-date", b"Param1=value1",
        "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    "post-sts-header-before": (
        "POST", "/", {"x-amz-security-token": TOKEN}, "host;x-amz-date;x-amz-security-token",
        b"", "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"),
}


def _suite_verify(method: str, target: str, extra: dict[str, str], signed: str, body: bytes,
                  signature: str) -> str:
    path, _, query = target.partition("?")
    headers = {"host": "example.amazonaws.com", "x-amz-date": SUITE_DATE, **extra}
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders={signed}, "
                                f"Signature={signature}")
    return Verifier(*SUITE_KEY).verify(method, path, query, headers,
                                       lambda: hashlib.sha256(body).hexdigest(), "service",
                                       now=SUITE_NOW)


@pytest.mark.parametrize("name", list(VECTORS))
def test_aws_test_suite(name: str) -> None:
    method, target, extra, signed, body, signature = VECTORS[name]
    assert _suite_verify(method, target, extra, signed, body, signature) == "us-east-1"
    # One hex digit off fails.
    wrong = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    with pytest.raises(AuthFailure):
        _suite_verify(method, target, extra, signed, body, wrong)


def test_suite_canonical_parts() -> None:
    assert canonical_uri("/example space/") == "/example%20space/"
    assert canonical_uri("/\u1234") == "/%E1%88%B4"
    assert canonical_uri("/example1/example2/../..") == "/"
    assert canonical_query("Param2=value2&Param1=value1") == "Param1=value1&Param2=value2"
    assert canonical_query("a=b%2fc") == "a=b%2Fc"  # hex in upper case


KEY = ("AKIAEXAMPLEHYPOTHES1", "a-secret-for-the-property-tests-0001")
_segment = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                   max_size=12)
_plain = st.text(string.ascii_letters + string.digits + "-_.~!$&'()*+,;=:@ %/?#", max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    segments=st.lists(st.one_of(_segment, st.sampled_from([".", "..", "a.b", "~x"])),
                      max_size=4),
    trailing=st.booleans(),
    query=st.lists(st.tuples(_plain, _plain), max_size=4),
    extra=st.dictionaries(st.from_regex(r"x-t-[a-z0-9-]{1,8}", fullmatch=True),
                          st.text(string.printable.replace("\r", "").replace("\n", "")
                                  .replace("\x0b", "").replace("\x0c", ""), max_size=16),
                          max_size=3),
    body=st.binary(max_size=64),
    service=st.sampled_from(["ebs", "ec2"]),
)
def test_botocore_signatures_verify(segments: list[str], trailing: bool,
                                    query: list[tuple[str, str]], extra: dict[str, str],
                                    body: bytes, service: str) -> None:
    """Whatever botocore signs, as it would send it, the verifier accepts; and rejects it
    once the path, query or body is changed."""
    path = "/" + "/".join(quote(s, safe="") if s not in (".", "..") else s for s in segments)
    if trailing and segments:
        path += "/"
    qs = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query)
    url = f"http://127.0.0.1:9537{path}" + (f"?{qs}" if qs else "")
    req = AWSRequest(method="POST", url=url, data=body, headers=dict(extra))
    SigV4Auth(Credentials(*KEY), service, "eu-west-3").add_auth(req)
    parts = urlsplit(req.url)
    headers = {k.lower(): str(v) for k, v in req.headers.items()}
    headers["host"] = parts.netloc
    verifier = Verifier(*KEY)

    def digest(data: bytes = body) -> str:
        return hashlib.sha256(data).hexdigest()

    assert verifier.verify("POST", parts.path, parts.query, headers, digest, service) == \
        "eu-west-3"
    with pytest.raises(AuthFailure):
        verifier.verify("POST", parts.path + "x", parts.query, headers, digest, service)
    with pytest.raises(AuthFailure):
        verifier.verify("POST", parts.path, parts.query + "&z=1", headers, digest, service)
    with pytest.raises(AuthFailure):
        verifier.verify("POST", parts.path, parts.query, headers,
                        lambda: digest(body + b"x"), service)
