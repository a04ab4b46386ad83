"""The fleet gateway: `pyinfra INVENTORY deploy/gateway.py` (acts on the inventory's `gateway` group).

HAProxy on the gateway host, its backends generated from the GPU hosts of the group named by
`gateway_backend_group` (default `gpu`). The `comfyfleet gateway deploy INVENTORY` CLI runs the same deploy.
"""

from pyinfra import host, inventory

from comfyfleet.deploys.gateway import GATEWAY_GROUP, backend_for, deploy_gateway
from comfyfleet.inventory import pyinfra_cli_errors

with pyinfra_cli_errors():
    if host in inventory.get_group(GATEWAY_GROUP, []):
        gpu = inventory.get_group(str(host.data.get("gateway_backend_group", "gpu")), [])
        deploy_gateway(backends=[backend_for(h.name, h.data.dict()) for h in gpu])
