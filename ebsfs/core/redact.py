"""Log text: the levels, and the redaction of secrets: their shapes (headers, query
parameters, key=value pairs, access key ids) and the exact values registered (configured
keys, secret flags and environment variables), masked in every record by ``RedactSecrets``."""

import logging
import os
import re
import threading

#: Log levels, as the options and the daemons spell them.
LEVELS = ("debug", "info", "warning", "error", "critical")

MASK = "***"

# Shapes of secrets that may end up in a message: header values, query parameters, key=value
# pairs in configuration dumps, and long-term or temporary access key ids. Runs before a
# literal are bounded ({0,64}): unbounded, a long line of 'a.a.a.' cost quadratic time.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(Signature=)[0-9a-fA-F]{16,}"), rf"\g<1>{MASK}"),
    (re.compile(r"(X-Amz-Signature=)[^&\s\"']+", re.I), rf"\g<1>{MASK}"),
    (re.compile(r"(X-Amz-(?:Security-Token|Credential)[=:]\s*)[^&\s\"',]+", re.I), rf"\g<1>{MASK}"),
    (re.compile(r"(Credential=)[^,\s\"']+"), rf"\g<1>{MASK}"),
    # key=value, key: value, "key": "value" and 'Key': 'value' for any key that names a
    # secret, a token or a password (secret_key, aws_secret_access_key, SessionToken, token).
    (
        re.compile(
            r"(\b[\w.-]{0,64}(?:secret[\w-]{0,64}|token|password|passwd|passphrase)"
            r"[\"']?\s*[=:]\s*[\"']?)"
            r"(?!\*\*\*)[^\s\"',}&;]+",
            re.I,
        ),
        rf"\g<1>{MASK}",
    ),
    # The same as command-line flags echoed back: --secret-access-key X, --token=X, and
    # argv printed as a list ('--secret-access-key', 'X').
    (
        re.compile(
            r"(--[\w-]{0,64}(?:secret|token|password|passwd|passphrase)[\w-]{0,64}"
            r"(?:=|[\"']?,?\s+[\"']?))(?!\*\*\*)(?!--)[^\s\"',}]+",
            re.I,
        ),
        rf"\g<1>{MASK}",
    ),
    (re.compile(r"\b((?:AKIA|ASIA)[A-Z0-9]{4})[A-Z0-9]{12}\b"), rf"\g<1>{MASK}"),
    # The password of a URL's user information (http://user:PASSWORD@host/).
    _URL_PASSWORD := (
        re.compile(r"(\b[a-zA-Z][\w+.-]{0,31}://[^\s/:@\"']{0,256}:)[^\s/@\"']{1,256}@"),
        rf"\g<1>{MASK}@",
    ),
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask this exact value in every later log line (say, a configured secret key)."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


#: Environment variables whose values sign requests (the mount's credentials, the server's
#: key pair): masked in every log line whether or not anything logs them.
SECRET_ENVIRONMENT = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "EBSFS_SECRET_ACCESS_KEY",
    "EBSFS_SERVER_SECRET_ACCESS_KEY",
)

#: Flags whose value is a secret, wherever a command line gives one.
_SECRET_FLAG = re.compile(r"--[\w-]*(?:secret|token|password|passwd|passphrase)[\w-]*", re.I)


def register_environment_secrets(environ: dict[str, str] | None = None) -> None:
    """Mask the values of :data:`SECRET_ENVIRONMENT` from now on."""
    environ = dict(os.environ) if environ is None else environ
    for name in SECRET_ENVIRONMENT:
        register_secret(environ.get(name))


def register_argv_secrets(argv: list[str]) -> None:
    """Mask the value of every secret-named flag in ``argv`` (``--secret-access-key X`` or
    ``--secret-access-key=X``), so an echo of the command line cannot show it."""
    for i, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if not _SECRET_FLAG.fullmatch(name):
            continue
        if sep:
            register_secret(value)
        elif i + 1 < len(argv):
            register_secret(argv[i + 1])


def redact(text: str) -> str:
    """``text`` with every known secret and secret-shaped value masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _mask_known(text)


def redact_message(text: str) -> str:
    """A command's one-line error with known secrets and URL passwords masked (not every
    secret shape: 'ExpiredToken: The ...' is a message, not a token)."""
    pattern, replacement = _URL_PASSWORD
    return _mask_known(pattern.sub(replacement, text))


def _mask_known(text: str) -> str:
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record's message (arguments merged in) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            # Format the traceback now so that its text is redacted too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True
