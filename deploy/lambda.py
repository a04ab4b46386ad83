"""Bootstrap Lambda GPU machines: `pyinfra <IP> deploy/lambda.py --user ubuntu` (or an inventory).

Keeps Lambda Stack's docker.io and NVIDIA toolkit when present; data under /home/ubuntu/comfyfleet.
"""

from pyinfra import inventory

from comfyfleet.deploys.bootstrap import provision
from comfyfleet.inventory import pyinfra_cli_errors, validate_inventory

with pyinfra_cli_errors():
    validate_inventory(inventory, provider="lambda")
    provision("lambda")
