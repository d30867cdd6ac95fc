"""One request through the server: SigV4 check, faults, routing to the EBS or EC2 handlers,
and every error turned into the family's wire shape."""

import hashlib
import logging
import re

from ebsfs.server import ebs as ebs_mod
from ebsfs.server.ec2 import Ec2Service
from ebsfs.server.errors import EbsError, Ec2Error, coral
from ebsfs.server.faults import Faults
from ebsfs.server.limits import RateLimits
from ebsfs.server.sigv4 import AuthFailure, Verifier
from ebsfs.server.storage import Store
from ebsfs.server.wire import Request, Response, ebs_error_response, ec2_error_response

log = logging.getLogger(__name__)

_EBS_AUTH_CODES = {
    "missing": "MissingAuthenticationTokenException",
    "incomplete": "IncompleteSignatureException",
    "unknown_key": "UnrecognizedClientException",
    "signature": "InvalidSignatureException",
    "expired": "InvalidSignatureException",
    "scope": "InvalidSignatureException",
}
_EC2_AUTH_CODES = {
    "missing": "MissingAuthenticationToken",
    "incomplete": "IncompleteSignature",
    "unknown_key": "AuthFailure",
    "signature": "SignatureDoesNotMatch",
    "expired": "RequestExpired",
    "scope": "SignatureDoesNotMatch",
}


#: Largest body of a request other than a block upload (StartSnapshot's JSON, EC2 forms):
#: AWS's own requests are a few KiB.
MAX_SMALL_BODY = 64 << 10
_BLOCK_PATH = re.compile(r"/snapshots/[^/]*/blocks/[^/]*")


class App:
    """The server's request handling, independent of the HTTP transport."""

    def __init__(
        self,
        store: Store,
        verifier: Verifier,
        faults: Faults,
        timing: ebs_mod.Timing,
        others: dict[str, tuple[Verifier, str]] | None = None,
        limits: RateLimits | None = None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        #: Further key pairs by access key id, each with the account id it signs for
        #: (``--second-account``); the main pair signs for ebs.ACCOUNT_ID.
        self.others = others or {}
        self.faults = faults
        #: AWS's quotas on the block calls (``--rate-limit``, ``--account-rate-limit``).
        self.limits = limits or RateLimits()
        self.ebs = ebs_mod.EbsService(store, timing)
        self.ec2 = Ec2Service(store, ebs_mod.ACCOUNT_ID, self.ebs.state, self.ebs.mint)
        # Faults act at several points of the general path; with none configured, block
        # reads and writes take the fast path.
        self._fast = faults.idle
        #: The Host header values accepted (lower-case), None: any. A server on loopback
        #: accepts only its loopback names, so that a web page cannot reach it through a
        #: DNS name rebound to 127.0.0.1; the transport sets this once it is bound.
        self.allowed_hosts: frozenset[str] | None = None

    @staticmethod
    def is_block_upload(method: str, raw_path: str) -> bool:
        """Whether a request may carry a block-sized body (PutSnapshotBlock's path)."""
        return method == "PUT" and _BLOCK_PATH.fullmatch(raw_path) is not None

    def admit(self, req: Request, length: int) -> Response | None:
        """The checks that need only the head, made before any body is read or memory is
        set aside for it: the Host, the signature as far as the head shows it, the body's
        size. An error answer (the body is then never read), or None to go on."""
        is_ec2 = req.raw_path in ("/", "")
        host = req.headers.get("host", "").lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            log.info("refused a request for Host %r (not a loopback name of this server)",
                     host[:100])
            names = ", ".join(sorted(self.allowed_hosts))
            text = (f"Host '{host[:100]}' is not accepted: this server listens on loopback "
                    f"and answers only to {names}.")
            if is_ec2:
                return ec2_error_response(Ec2Error("UnauthorizedOperation", text, 403),
                                          req.request_id)
            return ebs_error_response(
                EbsError(403, "AccessDeniedException", text, "UNAUTHORIZED_ACCOUNT"),
                req.request_id,
            )
        service = "ec2" if is_ec2 else "ebs"
        try:
            req.signature_checked = self._verifier_for(req).verify_head(
                req.method, req.raw_path, req.raw_query, req.headers, service
            )
        except AuthFailure as exc:
            return self._auth_error(exc, is_ec2, req)
        if length > MAX_SMALL_BODY and not self.is_block_upload(req.method, req.raw_path):
            text = f"Request body of {length} bytes exceeds the limit of {MAX_SMALL_BODY} bytes."
            if is_ec2:
                return ec2_error_response(Ec2Error("RequestEntityTooLarge", text, 413),
                                          req.request_id)
            return ebs_error_response(
                coral(413, "RequestEntityTooLargeException", text), req.request_id
            )
        return None

    @staticmethod
    def _auth_error(exc: AuthFailure, is_ec2: bool, req: Request) -> Response:
        if is_ec2:
            return ec2_error_response(
                Ec2Error(_EC2_AUTH_CODES[exc.kind], exc.message, 403), req.request_id
            )
        return ebs_error_response(
            coral(403, _EBS_AUTH_CODES[exc.kind], exc.message), req.request_id
        )

    def _verifier_for(self, req: Request) -> Verifier:
        """The key pair the request says it is signed with (setting ``req.account``)."""
        if self.others:
            key_id = _key_id(req.headers.get("authorization", ""))
            if key_id in self.others:
                verifier, req.account = self.others[key_id]
                return verifier
        return self.verifier

    def _auth(self, req: Request, service: str) -> None:
        digest: list[str] = []

        def body_sha256() -> str:
            if not digest:
                digest.append(hashlib.sha256(req.body).hexdigest())
            return digest[0]

        verifier = self._verifier_for(req)
        if req.signature_checked:
            verifier.verify_payload(req.headers, body_sha256)
            return
        verifier.verify(
            req.method, req.raw_path, req.raw_query, req.headers, body_sha256, service
        )

    def handle(self, req: Request) -> Response:
        """Answer one request; never raises."""
        self.faults.delay()
        is_ec2 = req.raw_path in ("/", "")
        try:
            if is_ec2:
                return self._handle_ec2(req)
            if self._fast and (req.method == "PUT" or req.method == "GET"):
                resp = self._block_fast(req)
                if resp is not None:
                    return resp
            return self._handle_ebs(req)
        except Exception:
            log.exception("internal error answering %s %s", req.method, req.raw_path)
            if is_ec2:
                return ec2_error_response(
                    Ec2Error("InternalError", "An internal error has occurred.", 500),
                    req.request_id,
                )
            return ebs_error_response(
                EbsError(500, "InternalServerException", "An internal error occurred."),
                req.request_id,
            )

    def _block_fast(self, req: Request) -> Response | None:
        """Put/GetSnapshotBlock by the fast path: the same SigV4 check, then the service's
        fast handler. None, with nothing changed, whenever the request is not a plain
        valid one: the general path then answers it (errors included)."""
        parts = req.raw_path.split("/")
        if len(parts) != 5 or parts[1] != "snapshots" or parts[3] != "blocks":
            return None
        if "%" in req.raw_path:
            return None  # escapes: the general path decodes the path
        try:
            self._auth(req, "ebs")
        except AuthFailure:
            return None
        req.operation = "PutSnapshotBlock" if req.method == "PUT" else "GetSnapshotBlock"
        throttled = self.limits.check(req.operation, parts[2], req.account)
        req.rate_counted = True
        if throttled is not None:
            return self._throttled(throttled, req)
        if req.method == "PUT":
            return self.ebs.put_fast(req, parts[2], parts[4])
        return self.ebs.get_fast(req, parts[2], parts[4])

    def _handle_ebs(self, req: Request) -> Response:
        try:
            try:
                self._auth(req, "ebs")
            except AuthFailure as exc:
                raise coral(403, _EBS_AUTH_CODES[exc.kind], exc.message) from None
            operation, params = ebs_mod.route(req)
            req.operation = operation
            throttled = None if req.rate_counted else self.limits.check(
                operation, params[0] if params else "", req.account)
            if throttled is not None:
                return self._throttled(throttled, req)
            self.faults.before_ebs(operation)
            resp = self.ebs.handle(req, operation, params)
        except EbsError as err:
            return ebs_error_response(err, req.request_id)
        if operation == "GetSnapshotBlock" and resp.file is not None:
            altered = self.faults.corrupt(resp.file_bytes)
            if altered is not None:
                log.debug("corrupting %s", req.raw_path)
                resp.body, resp.file = altered, None
        return self._maybe_drop(resp)

    def _handle_ec2(self, req: Request) -> Response:
        try:
            try:
                self._auth(req, "ec2")
            except AuthFailure as exc:
                raise Ec2Error(_EC2_AUTH_CODES[exc.kind], exc.message, 403) from None
            params = self.ec2.params(req)
            req.operation = params.get("Action", "-")
            self.faults.before_ec2(req.operation)
            resp = self.ec2.handle(req, params)
        except Ec2Error as err:
            return ec2_error_response(err, req.request_id)
        return self._maybe_drop(resp)

    @staticmethod
    def _throttled(err: EbsError, req: Request) -> Response:
        """A quota's throttling answer; AWS closes the connection after it."""
        resp = ebs_error_response(err, req.request_id)
        resp.close = True
        return resp

    def _maybe_drop(self, resp: Response) -> Response:
        if self.faults.drop():
            resp.drop = True
        return resp


def _key_id(auth: str) -> str:
    """The access key id an Authorization header names ("" if none)."""
    _, found, rest = auth.partition("Credential=")
    return rest.partition("/")[0] if found else ""
