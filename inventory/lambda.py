"""Lambda Labs GPU machines (example): `comfyfleet bootstrap inventory/lambda.py --provider lambda`.

Hosts get the `lambda` group (this file's name) and so group_data/lambda.py; a host's
own dict overrides group data. Every key is documented in src/comfyfleet/inventory.py.
"""

gpu = [
    ("203.0.113.10", {"comfyui_ref": "v0.8.0"}),
    ("203.0.113.11", {}),
]
