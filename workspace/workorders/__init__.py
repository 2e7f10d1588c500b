"""Work orders in the dispatchers' workspace: plan, edit, reassign, cancel, and read a
record's whole history.

Nothing here saves a model. Every change a dispatcher makes becomes an op of their admin
device (``operations.services.op_submit_local``), applied by the same code as a phone's op:
same version bump, same merge rules, same event, same feed entry for the phones to pull.

``admin`` puts the page together from its two halves, ``changelist`` (the list and its bulk
actions) and ``record`` (one work order, its inlines and its timeline); ``forms`` turn a
submitted form into op fields, ``submit`` sends them.
"""
