from django.urls import path

from media.api.views import AttachmentView, upload_collection, upload_resource

urlpatterns = [
    # The tus collection is the one path with a trailing slash (contract).
    path("uploads/", upload_collection, name="uploads"),
    path("uploads/<str:upload_id>", upload_resource, name="upload"),
    path("attachments/<str:attachment_id>", AttachmentView.as_view(), name="attachment"),
]
