"""Settings of the example shop. What differs per deployment comes from the environment.

SENTRY_DSN, SEGMENT_WRITE_KEY (required by SegmentIntegration), SEGMENT_HOST (optional), SENTRY_ENVIRONMENT,
SENTRY_RELEASE: see shop/sentry_setup.py. DJANGO_SECRET_KEY, DJANGO_DEBUG=1, DJANGO_ALLOWED_HOSTS (comma
separated), SHOP_DATABASE (an SQLite file; by default one in the system's temporary folder).
"""

import os
import tempfile

from shop.sentry_setup import init_sentry

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-development-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "shopsite.urls"
WSGI_APPLICATION = "shopsite.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "SHOP_DATABASE", os.path.join(tempfile.gettempdir(), "sentry-segment-example-shop.sqlite3")
        ),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
LOGIN_REDIRECT_URL = "/"

# As Sentry's Django guide says: initialise the SDK in settings, once, before Django handles a request.
# DjangoIntegration then puts request.user (its id, email and username) on every error event, which is
# what SegmentIntegration forwards for: no set_user() call anywhere in the shop.
init_sentry()
