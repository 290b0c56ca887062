import sys

from sentry_segment_integration.cli import main

sys.exit(main())
