"""Bootstrap Lambda GPU machines: `pyinfra <IP> deploy/lambda.py --user ubuntu` (or an inventory).

Keeps Lambda Stack's docker.io and NVIDIA toolkit when present; data under /home/ubuntu/comfyfleet.
"""

from pyinfra import inventory

from comfyfleet.deploys.bootstrap import provision
from comfyfleet.inventory import validate_inventory

validate_inventory(inventory, provider="lambda")
provision("lambda")
