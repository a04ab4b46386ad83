"""DataCrunch / Verda GPU machines (example): `comfyfleet bootstrap inventory/datacrunch.py --provider datacrunch`.

The block volume is found automatically (the one unmounted, unpartitioned disk); name
it per host when a machine has several (`block_device`). It is formatted only when blank.
"""

gpu = [
    ("198.51.100.20", {}),
    ("198.51.100.21", {"block_device": "/dev/vdb"}),
]
