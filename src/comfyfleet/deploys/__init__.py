"""pyinfra deploy functions: provider bootstrap and the provider-agnostic tiers.

`deploy/*.py` (pyinfra entry files) and the `comfyfleet` CLI (pyinfra's Python API)
both call these; there is one implementation behind the two doors.
"""
