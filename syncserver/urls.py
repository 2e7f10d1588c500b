from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from syncserver.docs import redoc, swagger_ui
from syncserver.health import healthz, metrics, readyz

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("operations.api.urls")),
    path("", include("conflicts.api.urls")),
    path("", include("media.api.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", swagger_ui, name="docs"),
    path("api/redoc/", redoc, name="redoc"),
    path("healthz", healthz),
    path("readyz", readyz),
    path("metrics", metrics),
]

handler400 = "common.errors.bad_request"
handler403 = "common.errors.permission_denied"
handler404 = "common.errors.page_not_found"
handler500 = "common.errors.server_error"
