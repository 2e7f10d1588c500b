"""The API's documentation pages: Swagger UI and ReDoc served from the package (no CDN),
under a content security policy that allows nothing from elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerSplitView

# The split Swagger view loads its script from the same URL (no inline script); both UIs
# style themselves inline and ReDoc runs a worker from a blob.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _with_csp(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_CSP
        return response

    return wrapped


swagger_ui = _with_csp(SpectacularSwaggerSplitView.as_view(url_name="schema"))
redoc = _with_csp(
    SpectacularRedocView.as_view(url_name="schema", template_name="api_docs/redoc.html")
)
