"""Every page of the workspace, registered on the dispatchers' site (``admin.site``, see
``workspace.apps``). Django's admin imports each installed app's ``admin`` module at start-up;
this is the workspace's, so each model gets its page here and nowhere else."""

from __future__ import annotations

from django.contrib import admin

from accounts.models import ApiToken, Device, Organization, User
from conflicts.models import Conflict
from media.models import Attachment, Upload
from operations.models import Event, Operation
from workorders.models import WorkOrder
from workspace.attachments import AttachmentAdmin, UploadAdmin
from workspace.conflicts import ConflictAdmin
from workspace.devices import DeviceAdmin
from workspace.logs import EventAdmin, OperationAdmin
from workspace.people import ApiTokenAdmin, FieldUserAdmin, OrganizationAdmin
from workspace.workorders.admin import WorkOrderAdmin

admin.site.register(Organization, OrganizationAdmin)
admin.site.register(User, FieldUserAdmin)
admin.site.register(ApiToken, ApiTokenAdmin)
admin.site.register(Device, DeviceAdmin)
admin.site.register(WorkOrder, WorkOrderAdmin)
admin.site.register(Operation, OperationAdmin)
admin.site.register(Event, EventAdmin)
admin.site.register(Conflict, ConflictAdmin)
admin.site.register(Attachment, AttachmentAdmin)
admin.site.register(Upload, UploadAdmin)
