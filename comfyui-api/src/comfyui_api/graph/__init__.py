"""ComfyUI's graph format in one place: formats, virtual nodes, subgraphs, widgets, UI → API.

Pure standard library (it runs inside the single-file ``comfyui-api.pyz`` under ``python3 -I -S``);
used by comfyui-api to serve workflows and by ``comfyfleet analyze`` to read them.
"""

from comfyui_api.graph.convert import WidgetValues, ui_to_api
from comfyui_api.graph.flatten import FlatGraph, FlatNode, GraphError
from comfyui_api.graph.formats import (
    FRONTEND_ONLY,
    MODE_BYPASSED,
    MODE_MUTED,
    SUBGRAPH_ID,
    detect_format,
    is_link,
    unwrap,
)
from comfyui_api.graph.widgets import UNDEFINED, combo_options, input_spec

__all__ = [
    "FRONTEND_ONLY",
    "MODE_BYPASSED",
    "MODE_MUTED",
    "SUBGRAPH_ID",
    "UNDEFINED",
    "FlatGraph",
    "FlatNode",
    "GraphError",
    "WidgetValues",
    "combo_options",
    "detect_format",
    "input_spec",
    "is_link",
    "ui_to_api",
    "unwrap",
]
