from django.urls import path

from conflicts.api.views import ConflictListView, ConflictResolveView

urlpatterns = [
    path("conflicts", ConflictListView.as_view(), name="conflict-list"),
    path(
        "conflicts/<str:conflict_id>/resolve",
        ConflictResolveView.as_view(),
        name="conflict-resolve",
    ),
]
