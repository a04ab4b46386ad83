"""Bootstrap DataCrunch (Verda) GPU machines: `pyinfra <IP> deploy/datacrunch.py --user root`.

Formats the block volume only when it is blank, mounts it by UUID, puts ComfyUI's data on it.
"""

from pyinfra import inventory

from comfyfleet.deploys.bootstrap import provision
from comfyfleet.inventory import pyinfra_cli_errors, validate_inventory

with pyinfra_cli_errors():
    validate_inventory(inventory, provider="datacrunch")
    provision("datacrunch")
