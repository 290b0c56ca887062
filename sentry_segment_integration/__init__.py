"""Mirror the error events Sentry sends into Segment as ``"Error Captured"`` track calls."""

from sentry_segment_integration.integration import SegmentIntegration
from sentry_segment_integration.settings import ConfigurationError
from sentry_segment_integration.version import __version__

__all__ = ["ConfigurationError", "SegmentIntegration", "__version__"]
