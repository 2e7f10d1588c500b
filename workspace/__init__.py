"""The dispatchers' workspace: the Django admin, as dispatchers use it.

``site`` and ``base`` say who gets in and what each role may do; each other module holds the
pages of one subject (``workorders`` is a package: it is the biggest screen); ``admin``
registers them all.
"""
