"""Where the ebs and ec2 clients go: the endpoint resolution order of docs/usage.md.

1. an explicit ``endpoint_url`` is used for both the ebs and the ec2 client;
2. else botocore's own configuration (``AWS_ENDPOINT_URL_EBS``, ``AWS_ENDPOINT_URL_EC2``,
   ``AWS_ENDPOINT_URL``, ``endpoint_url`` in the profile);
3. else, when a region is configured (flag, ``AWS_REGION``/``AWS_DEFAULT_REGION``, profile), AWS;
4. else, when the EC2 instance metadata names a region (botocore's fetcher: one short attempt,
   ``AWS_EC2_METADATA_DISABLED`` and the metadata endpoint settings honoured), AWS there;
5. else the local server at ``DEFAULT_LOCAL_ENDPOINT`` in ``us-east-1``.

``Endpoints.why`` says which rule chose and where its setting came from.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions
import botocore.utils

from ebsfs.core.errors import UsageError
from ebsfs.options.config import DEFAULT_LOCAL_ENDPOINT, DEFAULT_LOCAL_REGION, AwsConfig

log = logging.getLogger(__name__)

__all__ = ["IMDS_DEADLINE", "Endpoints", "instance_region", "resolve_endpoints"]


@dataclass(frozen=True)
class Endpoints:
    """Where the two clients go, as resolved by ``resolve_endpoints``."""

    ebs: str | None  # None: botocore decides (its env/config, or AWS)
    ec2: str | None
    region: str
    local: bool  # not AWS: the dev key pair may stand in for missing credentials
    why: str = ""  # which rule chose them, and where its setting came from

    def describe(self) -> str:
        """One line for the log and ``ebsfs ls``: where requests go, and why."""
        if self.ebs is None and self.local:
            where = f"the endpoints botocore is configured with, region {self.region}"
        elif self.ebs is None:
            where = f"AWS in {self.region}"
        else:
            where = self.ebs if self.ebs == self.ec2 else f"{self.ebs} (ec2: {self.ec2})"
        return f"{where} ({self.why})" if self.why else where


def _botocore_endpoint_configured(session: boto3.Session) -> str | None:
    """What configures botocore's own endpoints, or None."""
    env = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL_EC2")
    named = [name for name in env if os.environ.get(name)]
    if named:
        return ", ".join(named)
    try:
        scoped = session._session.get_scoped_config()
    except botocore.exceptions.ProfileNotFound:
        return None
    if scoped.get("endpoint_url") or scoped.get("services"):
        return "endpoint_url in the AWS profile's configuration"
    return None


#: What a region name looks like (us-east-1, us-gov-west-1, eu-isoe-west-1): anything else
#: from the instance metadata is not taken as one.
_REGION_NAME = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+-[0-9]{1,3}")
#: The longest the instance metadata may take to name a region, whatever it sends.
IMDS_DEADLINE = 5.0


def instance_region(session: boto3.Session) -> str | None:
    """The region of the EC2 instance this runs on, from its metadata, or None.

    botocore's own provider: its timeout and attempts (1 s, 1 by default), the metadata
    endpoint settings and ``AWS_EC2_METADATA_DISABLED`` apply. Its timeout is per read, so
    the whole lookup is bounded by :data:`IMDS_DEADLINE` too (an answer dripping a byte at a
    time is given up, its thread left to end alone), and what it names must look like a
    region name.
    """
    answer: list[str | None] = []

    def provide() -> None:
        try:
            answer.append(botocore.utils.IMDSRegionProvider(session._session).provide())
        except (botocore.exceptions.BotoCoreError, OSError, ValueError) as exc:
            log.debug("instance metadata: no region (%s)", exc)
            answer.append(None)

    worker = threading.Thread(target=provide, name="ebsfs-imds", daemon=True)
    worker.start()
    worker.join(IMDS_DEADLINE)
    if not answer:
        log.warning("instance metadata: no region within %.0f s; not used", IMDS_DEADLINE)
        return None
    region = answer[0]
    if region and not _REGION_NAME.fullmatch(region):
        log.warning("instance metadata: %.80r is no region name; not used", region)
        return None
    return region or None


def resolve_endpoints(aws: AwsConfig, session: boto3.Session) -> Endpoints:
    """Apply the endpoint resolution order of the module docstring."""
    region = aws.region or session.region_name
    if aws.region:
        region_from = f"region {aws.region} from {aws.origin('region') or 'the configuration'}"
    else:
        region_from = f"region {region} from the AWS profile's configuration"
    if aws.endpoint_url:
        why = f"endpoint from {aws.origin('endpoint_url') or 'the configuration'}"
        return Endpoints(
            aws.endpoint_url, aws.endpoint_url, region or DEFAULT_LOCAL_REGION, True, why
        )
    configured = _botocore_endpoint_configured(session)
    if configured:
        return Endpoints(None, None, region or DEFAULT_LOCAL_REGION, True, f"set by {configured}")
    if region:
        return Endpoints(None, None, region, False, region_from)
    found = instance_region(session)
    if found:
        return Endpoints(None, None, found, False, f"region {found} from the EC2 instance metadata")
    return Endpoints(
        DEFAULT_LOCAL_ENDPOINT,
        DEFAULT_LOCAL_ENDPOINT,
        DEFAULT_LOCAL_REGION,
        True,
        "the local server: no endpoint or region is configured and no EC2 instance metadata "
        "answered",
    )


def new_client(
    session: boto3.Session, service: str, args: dict[str, Any], endpoints: Endpoints
) -> Any:
    """``session.client(service, **args)``; an endpoint URL it cannot use (from any layer,
    botocore's own AWS_ENDPOINT_URL* included) is a UsageError saying where it came from."""
    try:
        make: Any = session.client  # its stubs know each service by a literal name
        return make(service, **args)
    except botocore.exceptions.BotoCoreError:
        raise
    except ValueError as exc:  # botocore's "Invalid endpoint: x", urllib's IPv6 one
        raise UsageError(
            f"{service} endpoint URL not usable ({exc}); expected http(s)://HOST[:PORT] "
            f"({endpoints.why})"
        ) from None
