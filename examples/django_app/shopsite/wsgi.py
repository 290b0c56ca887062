"""The WSGI application, for gunicorn, uWSGI or mod_wsgi: ``gunicorn shopsite.wsgi`` from examples/django_app."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")

application = get_wsgi_application()
