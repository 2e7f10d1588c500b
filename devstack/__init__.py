"""Brings fieldsync's services up for development, tests and benchmarks.

`python -m devstack run|test|exec` (see devstack/__main__.py). Nothing is imported here so that
`python -m devstack.ensure_bucket` works in the production image, which has only the runtime
requirements.
"""
