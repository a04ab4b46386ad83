"""Maintenance tasks on ComfyUI hosts: `pyinfra INVENTORY deploy/common.py --data task=status`.

Tasks: status, logs, restart (--data component=comfyui|api|all), update-comfyui-core
(--data ref=REF), bootstrap, runtime, and those the tier modules register (see
comfyfleet.deploys.tasks). The `comfyfleet common` CLI runs the same tasks.
"""

from pyinfra import host, inventory

from comfyfleet.deploys.tasks import run_task
from comfyfleet.inventory import host_config, pyinfra_cli_errors, validate_inventory

with pyinfra_cli_errors():
    validate_inventory(inventory)  # every host, before any command runs on any of them
    run_task(host_config(host).task or "status")
