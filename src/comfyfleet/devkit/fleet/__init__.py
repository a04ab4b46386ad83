"""comfyfleet's local test fleet: SSH hosts in containers on this machine, with local upstreams.

Used by tests/conftest.py (fixtures ``fleet``, ``fleet_hosts``, ``start_host``,
``write_inventory``) and by ``scripts/fleet.py`` (a sandbox fleet for people).
"""

from comfyfleet.devkit.fleet import images
from comfyfleet.devkit.fleet.errors import FleetUnavailable
from comfyfleet.devkit.fleet.hosts import Host, LoopVolume
from comfyfleet.devkit.fleet.session import Fleet, cleanup, down_all, list_fleets
from comfyfleet.devkit.fleet.upstreams import ComfyUIUpstream, GitUpstreams

__all__ = [
    "ComfyUIUpstream",
    "Fleet",
    "FleetUnavailable",
    "GitUpstreams",
    "Host",
    "LoopVolume",
    "cleanup",
    "down_all",
    "images",
    "list_fleets",
]
