"""The fleet gateway: `pyinfra INVENTORY deploy/gateway.py` (acts on the inventory's `gateway` group).

HAProxy on the gateway host, its backends generated from the GPU hosts of the group named by
`gateway_backend_group` (default `gpu`). The `comfyfleet gateway deploy INVENTORY` CLI runs the same deploy.
"""

from pyinfra import host, inventory

from comfyfleet.deploys.gateway import GATEWAY_GROUP, backend_for, deploy_gateway
from comfyfleet.inventory import host_config, pyinfra_cli_errors, validate_inventory

with pyinfra_cli_errors():
    validate_inventory(inventory)  # every host, before any command; sets each host's `_sudo`
    if host in inventory.get_group(GATEWAY_GROUP, []):
        gpu = inventory.get_group(host_config(host).gateway_backend_group, [])
        deploy_gateway(backends=[backend_for(h.name, h.data.dict()) for h in gpu])
