"""A Celery worker that reports failed tasks to Sentry and, for tasks run for a user, to Segment.

``celery -A examples.celery_app worker`` finds the app here; the tasks and Sentry's set-up are in ``tasks.py``.
"""

from .tasks import app

__all__ = ["app"]
