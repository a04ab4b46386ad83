"""`comfyfleet ship`: one command from a workflow file to a verified, recorded endpoint.

The package, by responsibility (imports run down this list, never up):

- :mod:`~comfyfleet.ship.pipeline`  steps, budgets, retries, compensation (:func:`run_pipeline`)
- :mod:`~comfyfleet.ship.checks`    health/ready and one generation through :mod:`comfyui_api.client`
- :mod:`~comfyfleet.ship.record`    the deployment and every run into the registry
- :mod:`~comfyfleet.ship.plan`      strict analysis, the target's hosts, per-host locks
- :mod:`~comfyfleet.ship.modal`     the steps of a ship to Modal
- :mod:`~comfyfleet.ship.hosts`     the steps of a ship to hosts (:func:`standard_steps`)
- :mod:`~comfyfleet.ship.serving`   `deployments stop/start`

This module re-exports what the CLI, the schedules and scripts use.
"""

from comfyfleet.ship.checks import (
    API_KEY_ENV,
    api_base_for,
    api_client,
    api_route_for,
    check_generation,
    check_health,
    count_generation,
    generate_step,
    health_step,
    judged,
    read_api_key,
)
from comfyfleet.ship.hosts import HOST_TASKS, TaskRun, put_back_nodes, standard_steps, task_step
from comfyfleet.ship.modal import modal_app_file, modal_app_name, modal_steps
from comfyfleet.ship.pipeline import (
    LOCAL,
    Backoff,
    Failure,
    HostOutcomes,
    NullReporter,
    PipelineResult,
    Reporter,
    Retryable,
    ShipContext,
    Step,
    StepResult,
    describe,
    each_host,
    here,
    run_pipeline,
)
from comfyfleet.ship.plan import (
    MODAL,
    HostsBusy,
    HostSpecs,
    analyze_step,
    hold_hosts,
    prepare_ship,
    resolve_target,
    unresolved_message,
)
from comfyfleet.ship.record import ShipOutcome, record_run, record_step, run_ship, workflow_url

__all__ = [
    "API_KEY_ENV",
    "HOST_TASKS",
    "LOCAL",
    "MODAL",
    "Backoff",
    "Failure",
    "HostOutcomes",
    "HostSpecs",
    "HostsBusy",
    "NullReporter",
    "PipelineResult",
    "Reporter",
    "Retryable",
    "ShipContext",
    "ShipOutcome",
    "Step",
    "StepResult",
    "TaskRun",
    "analyze_step",
    "api_base_for",
    "api_client",
    "api_route_for",
    "check_generation",
    "check_health",
    "count_generation",
    "describe",
    "each_host",
    "generate_step",
    "health_step",
    "here",
    "hold_hosts",
    "judged",
    "modal_app_file",
    "modal_app_name",
    "modal_steps",
    "prepare_ship",
    "put_back_nodes",
    "read_api_key",
    "record_run",
    "record_step",
    "resolve_target",
    "run_pipeline",
    "run_ship",
    "standard_steps",
    "task_step",
    "unresolved_message",
    "workflow_url",
]
