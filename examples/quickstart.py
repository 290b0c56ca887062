"""The smallest real setup: Sentry plus SegmentIntegration, configured from the environment.

    SENTRY_DSN=https://...  SEGMENT_WRITE_KEY=...  python examples/quickstart.py

SEGMENT_HOST may point at a local receiver instead of Segment: `python -m sentry_segment_integration demo`
shows one, started for you.
"""

import os

import sentry_sdk

from sentry_segment_integration import SegmentIntegration

integration = SegmentIntegration()  # write key from SEGMENT_WRITE_KEY, host from SEGMENT_HOST
sentry_sdk.init(dsn=os.environ.get("SENTRY_DSN"), integrations=[integration], release="quickstart@1.0.0")

sentry_sdk.set_user({"id": "user-1234", "email": "ada@example.com"})
try:
    {}["missing"]
except KeyError:
    sentry_sdk.capture_exception()

sentry_sdk.flush(timeout=5)
print(integration.stats())
