"""AWS Signature Version 4 verification (ebs-direct-api.md §9, docs/server.md "Credentials"),
from the request head where the payload hash is a header; signing keys and parsed dates
cached, so a request costs one canonical string, one SHA256 and one HMAC."""

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
MAX_SKEW = 15 * 60

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*"
    r"Signature=([0-9a-f]{64})\s*",
    re.ASCII,
)
_SPACES = re.compile(r"\s+")
_AMZ_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
# A path whose segments are non-empty runs of unreserved characters not starting with a dot:
# its canonical form is itself.
_PLAIN_PATH = re.compile(r"/|(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+/?")
#: Authorization headers remembered (up to the signature) before the cache starts afresh.
_AUTH_CACHE = 64


class _Scope:
    """What an ``Authorization`` header says before its signature, once checked."""

    __slots__ = ("date", "names", "region", "service", "signed_names")

    def __init__(self, date: str, region: str, service: str, signed_names: str) -> None:
        self.date = date
        self.region = region
        self.service = service
        self.signed_names = signed_names
        self.names = signed_names.split(";")


class AuthFailure(Exception):
    """A request that is not signed with the server's key. ``kind`` picks the wire code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # missing | incomplete | unknown_key | signature | expired | scope
        self.message = message


class Verifier:
    """Checks SigV4 ``Authorization`` headers for one access key id and secret."""

    def __init__(self, access_key_id: str, secret_access_key: str) -> None:
        self.access_key_id = access_key_id
        self._secret = ("AWS4" + secret_access_key).encode()
        # An HMAC object keyed with the signing key, copied for each request: OpenSSL 3
        # looks the digest up by name on every one-shot hmac.digest, which cost twice
        # the HMAC itself.
        self._keys: dict[tuple[str, str, str], hmac.HMAC] = {}
        #: The last X-Amz-Date seen and its epoch seconds (None: malformed).
        self._date: tuple[str, float | None] = ("", None)
        #: Authorization headers up to their signature, with the service they were checked
        #: for: a client sends the same one, bar the signature, with every request.
        self._scopes: dict[tuple[str, str], _Scope] = {}

    def _signer(self, date: str, region: str, service: str) -> hmac.HMAC:
        signer = self._keys.get((date, region, service))
        if signer is None:
            k = hmac.digest(self._secret, date.encode(), "sha256")
            k = hmac.digest(k, region.encode(), "sha256")
            k = hmac.digest(k, service.encode(), "sha256")
            key = hmac.digest(k, b"aws4_request", "sha256")
            if len(self._keys) > 64:
                self._keys.clear()
            signer = self._keys[(date, region, service)] = hmac.new(key, digestmod="sha256")
        return signer

    def _scope(self, auth: str, service: str) -> tuple[_Scope, str]:
        """The checked start of an Authorization header, and its signature; AuthFailure if
        it is not one of ours for ``service``."""
        head = auth[:-64]
        scope = self._scopes.get((head, service))
        if scope is not None and _SIGNATURE.fullmatch(auth, len(head)):
            return scope, auth[-64:]
        m = _AUTH_RE.fullmatch(auth)
        if not m:
            raise AuthFailure(
                "incomplete",
                "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
                f"parameters of the {ALGORITHM} algorithm.",
            )
        credential, signed_names, signature = m.groups()
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise AuthFailure("incomplete", f"Credential scope is malformed: '{credential}'.")
        key_id, date, region, scope_service, _ = parts
        if key_id != self.access_key_id:
            raise AuthFailure(
                "unknown_key", "The security token included in the request is invalid."
            )
        if scope_service != service:
            raise AuthFailure(
                "scope", f"Credential should be scoped to correct service: '{service}'."
            )
        scope = _Scope(date, region, service, signed_names)
        # Only a header that ends with its signature is remembered, so that the header
        # up to it plus any valid signature is exactly what the expression accepts.
        if m.end(3) == len(auth):
            if len(self._scopes) >= _AUTH_CACHE:
                self._scopes.clear()
            self._scopes[(head, service)] = scope
        return scope, signature

    def verify(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str],
        body_sha256: Callable[[], str],
        service: str,
        now: float | None = None,
    ) -> str:
        """Raise AuthFailure unless the request is signed by our key for ``service``.

        ``headers`` maps lower-case names to values (repeated headers joined by ``,``).
        Returns the region of the credential scope.
        """
        scope, signature, amz_date = self._check_head(headers, service, now)
        payload = headers.get("x-amz-content-sha256")
        if payload is None:
            payload = body_sha256()
        else:
            self.verify_payload(headers, body_sha256)
        self._check_signature(method, raw_path, raw_query, headers, scope, signature, amz_date,
                              payload)
        return scope.region

    def verify_head(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str],
        service: str,
        now: float | None = None,
    ) -> bool:
        """Check what the head alone shows, before any body is read: the header's form,
        key, scope, date and, when the payload hash is a header (``X-Amz-Content-SHA256``),
        the signature itself. True if the signature was checked: the body then only has to
        match that header (``verify_payload``); False: ``verify`` must run on the body."""
        scope, signature, amz_date = self._check_head(headers, service, now)
        payload = headers.get("x-amz-content-sha256")
        if payload is None:
            return False
        self._check_signature(method, raw_path, raw_query, headers, scope, signature, amz_date,
                              payload)
        return True

    @staticmethod
    def verify_payload(headers: Mapping[str, str], body_sha256: Callable[[], str]) -> None:
        """The body against a signed ``X-Amz-Content-SHA256`` (unless UNSIGNED-PAYLOAD)."""
        payload = headers.get("x-amz-content-sha256")
        if payload is not None and payload != UNSIGNED and payload != body_sha256():
            raise AuthFailure(
                "signature",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )

    def _check_head(
        self, headers: Mapping[str, str], service: str, now: float | None
    ) -> tuple[_Scope, str, str]:
        """The scope, signature and X-Amz-Date of a request whose Authorization header is
        well formed, for our key and ``service``, and dated now; AuthFailure otherwise."""
        auth = headers.get("authorization")
        if not auth:
            raise AuthFailure("missing", "Missing Authentication Token")
        scope, signature = self._scope(auth, service)
        date = scope.date
        amz_date = headers.get("x-amz-date", "")
        cached_date, stamp = self._date
        if cached_date != amz_date:
            stamp = _parse_amz_date(amz_date)
            self._date = (amz_date, stamp)
        if stamp is None:
            raise AuthFailure("incomplete", "Missing or malformed X-Amz-Date header.")
        if amz_date[:8] != date:
            raise AuthFailure(
                "scope",
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                f"date from HTTP: '{date}' != '{amz_date[:8]}', from '{amz_date}'.",
            )
        skew = (time.time() if now is None else now) - stamp
        if abs(skew) > MAX_SKEW:
            raise AuthFailure(
                "expired",
                f"Signature expired: {amz_date} is now earlier or later than the allowed "
                "window of 15 minutes around the server's time.",
            )
        if "host" not in scope.names:
            raise AuthFailure("incomplete", "'Host' must be a signed header.")
        return scope, signature, amz_date

    def _check_signature(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str],
        scope: _Scope,
        signature: str,
        amz_date: str,
        payload: str,
    ) -> None:
        canonical_headers = "".join(
            [f"{n}:{_header_value(headers.get(n, ''))}\n" for n in scope.names]
        )
        canonical = "\n".join(
            (
                method,
                canonical_uri(raw_path),
                canonical_query(raw_query),
                canonical_headers,
                scope.signed_names,
                payload,
            )
        )
        date, region, service = scope.date, scope.region, scope.service
        credential_scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = "\n".join(
            (ALGORITHM, amz_date, credential_scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signer = self._signer(date, region, service).copy()
        signer.update(to_sign.encode())
        if not hmac.compare_digest(signer.hexdigest(), signature):
            raise AuthFailure(
                "signature",
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method. Consult the "
                "service documentation for details.",
            )


def _header_value(value: str) -> str:
    """A header value as SigV4 canonicalises it: trimmed, inner runs of spaces as one."""
    value = value.strip()
    # Any whitespace but a lone space is non-printable: only then is there work to do.
    if "  " in value or not value.isprintable():
        return _SPACES.sub(" ", value)
    return value


def canonical_uri(raw_path: str) -> str:
    """The path as SigV4 canonicalises it for services other than S3: dot segments and empty
    segments removed (a leading and a trailing slash kept), then the path as sent
    percent-encoded once more (``%0A`` becomes ``%250A``, ``+`` becomes ``%2B``)."""
    if _PLAIN_PATH.fullmatch(raw_path):
        return raw_path  # every EBS request botocore makes: nothing to do
    segments: list[str] = []
    for segment in raw_path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    path = "/" + "/".join(segments)
    if raw_path.endswith("/") and segments:
        path += "/"
    return quote(path, safe="/~")


def canonical_query(raw_query: str) -> str:
    """The query string decoded, re-encoded with the RFC 3986 unreserved set, and sorted."""
    if not raw_query:
        return ""
    pairs = []
    for item in raw_query.split("&"):
        if not item:
            continue
        k, _, v = item.partition("=")
        pairs.append((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _parse_amz_date(text: str) -> float | None:
    """Epoch seconds of an ``X-Amz-Date`` (``yyyymmddTHHMMSSZ``); None if malformed."""
    m = _AMZ_DATE.fullmatch(text)
    if m is None:
        return None
    fields = tuple(int(g) for g in m.groups())
    if not (1 <= fields[1] <= 12 and 1 <= fields[2] <= 31 and fields[3] < 24
            and fields[4] < 60 and fields[5] < 61):
        return None
    return float(calendar.timegm((*fields, 0, 0, 0)))
