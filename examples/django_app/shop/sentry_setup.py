"""Sentry and SegmentIntegration for the shop, configured from the environment.

settings.py calls ``init_sentry()`` once. Environment: SENTRY_DSN; SEGMENT_WRITE_KEY, the Segment source's
write key (SegmentIntegration refuses to start without one); SEGMENT_HOST, optional, another Segment
endpoint (the EU region, a proxy, a local receiver); SENTRY_ENVIRONMENT and SENTRY_RELEASE, optional.
"""

import os

import sentry_sdk
from sentry_sdk.integrations.django import DjangoIntegration

from sentry_segment_integration import SegmentIntegration


def init_sentry() -> None:
    sentry_sdk.init(
        dsn=os.environ.get("SENTRY_DSN"),
        environment=os.environ.get("SENTRY_ENVIRONMENT"),
        release=os.environ.get("SENTRY_RELEASE"),
        # SegmentIntegration() reads SEGMENT_WRITE_KEY and, when set, SEGMENT_HOST.
        integrations=[DjangoIntegration(), SegmentIntegration()],
        # Needed for DjangoIntegration to attach request.user to events: without a user id, an error
        # is not forwarded to Segment (sentry-sdk 1.x and 2.x: send_default_pii=True; 3.x does so by
        # default and has no such option). It also lets Sentry record IP addresses, headers and
        # cookies; Segment only ever gets the user id, the IP address, the page and the User-Agent.
        **({"send_default_pii": True} if sentry_sdk.VERSION.startswith(("1.", "2.")) else {}),
    )
