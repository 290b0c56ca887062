"""A small FastAPI shop that reports its errors to Sentry and, for signed-in users, to Segment."""
