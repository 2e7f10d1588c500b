from django.urls import path

from operations.api.views import OpOutcomeView, PullView, PushView

urlpatterns = [
    path("sync/push", PushView.as_view(), name="sync-push"),
    path("sync/pull", PullView.as_view(), name="sync-pull"),
    path("sync/ops/<str:op_id>", OpOutcomeView.as_view(), name="sync-op"),
]
