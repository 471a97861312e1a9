"""A small Django project for bench/gc_freeze.py: the admin, auth, sessions, messages and
static files apps installed, one page rendered from a template (no database query)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_small.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
