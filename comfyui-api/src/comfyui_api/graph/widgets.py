"""Which widgets a node has, in what order, and which saved value each one gets.

The frontend builds a node's widgets from its /object_info definition (inputs in ``input_order``,
sockets-only types and ``forceInput`` excluded), adds a control widget after seeds and controlled
combos, and an upload button after media pickers. ``widgets_values`` are then assigned by position;
widgets the file has no value for keep their definition default. Control, filter and upload widgets
take a position but are never sent to the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfyui_api.graph.formats import CONTROL_VALUES
from comfyui_api.graph.formats import as_dict as _as_dict

# Input types the frontend draws as a widget (core widgets plus those of its bundled extensions).
WIDGET_TYPES = frozenset(
    {
        "INT",
        "FLOAT",
        "BOOLEAN",
        "STRING",
        "COMBO",
        "MARKDOWN",
        "IMAGEUPLOAD",
        "COLOR",
        "IMAGECOMPARE",
        "CHART",
        "GALLERIA",
        "TEXTAREA",
        "COMFY_DYNAMICCOMBO_V3",
        "AUDIOUPLOAD",
        "AUDIO_RECORD",
        "AUDIO_UI",
        "LOAD_3D",
        "PREVIEW_3D",
        "WEBCAM",
    }
)
_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
UNDEFINED = object()  # a widget whose value is JavaScript's undefined: left out of the prompt


@dataclass(frozen=True)
class Widget:
    """One widget of a node: its name, whether the prompt carries it, and its default value.

    A dynamic combo (``COMFY_DYNAMICCOMBO_V3``) also has ``choices``: option key → the inputs that
    option adds right after it (as widgets named ``<combo>.<input>``).
    """

    name: str
    to_prompt: bool = True
    default: Any = UNDEFINED
    choices: dict[str, Any] | None = field(default=None, compare=False, hash=False)


def input_spec(info: dict[str, Any], name: str) -> tuple[Any, dict[str, Any]] | None:
    """(type, options) of a declared input of a node definition, or None."""
    inputs = _as_dict(info.get("input"))
    for section in ("required", "optional"):
        spec = _as_dict(inputs.get(section)).get(name)
        if isinstance(spec, list) and spec:
            return spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return None


def combo_options(kind: Any, extra: dict[str, Any]) -> list[Any] | None:
    """The choices of a combo input, or None when the input is no combo."""
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(extra.get("options") or [])
    return None


def _specs(info: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any], bool]]:
    """(name, type, options, optional) in the frontend's order: input_order, then the rest."""
    inputs = _as_dict(info.get("input"))
    required = _as_dict(inputs.get("required"))
    optional = _as_dict(inputs.get("optional"))
    flat: dict[str, tuple[Any, dict[str, Any], bool]] = {}
    for section, optional_flag in ((required, False), (optional, True)):
        for name, spec in section.items():
            if isinstance(spec, list) and spec and name not in flat:
                flat[name] = (
                    spec[0],
                    spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {},
                    optional_flag,
                )
    # The frontend's upload extensions add an 'upload' input after the media picker's definition.
    for spec in required.values():
        if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict):
            if combo_options(spec[0], spec[1]) is not None and any(
                spec[1].get(f) is True for f in _UPLOAD_FLAGS
            ):
                flat["upload"] = ("IMAGEUPLOAD", {}, False)
                break
    audio = required.get("audio")
    if (
        isinstance(audio, list)
        and len(audio) > 1
        and isinstance(audio[1], dict)
        and audio[1].get("audio_upload") is True
    ):
        flat["upload"] = ("AUDIOUPLOAD", {}, False)
    order = info.get("input_order") if isinstance(info.get("input_order"), dict) else None
    if order is None:
        return [(n, *v) for n, v in flat.items()]
    out: list[tuple[str, Any, dict[str, Any], bool]] = []
    seen: set[str] = set()
    for key, optional_flag in (("required", False), ("optional", True)):
        for name in order.get(key) or []:
            if name in flat and flat[name][2] == optional_flag and name not in seen:
                seen.add(name)
                out.append((name, *flat[name]))
    out += [(n, *v) for n, v in flat.items() if n not in seen]
    return out


def _default(kind: Any, extra: dict[str, Any]) -> Any:
    options = combo_options(kind, extra)
    if options is not None:
        if extra.get("default"):
            return extra["default"]
        if options:
            return options[0]
        return "Loading..." if extra.get("remote") else UNDEFINED
    if "default" in extra:
        return extra["default"]
    return {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}.get(kind, UNDEFINED)


def _widgets_for(name: str, kind: Any, extra: dict[str, Any]) -> list[Widget]:
    """The widgets one input spec gives: the widget, then its control widgets (or a dynamic combo's inputs)."""
    widget_type = "COMBO" if isinstance(kind, list) else kind
    if extra.get("forceInput") or not isinstance(widget_type, str) or widget_type not in WIDGET_TYPES:
        return []
    if widget_type in ("IMAGEUPLOAD", "AUDIOUPLOAD"):
        return [Widget(name, to_prompt=False)]
    if widget_type == "COMFY_DYNAMICCOMBO_V3":
        choices = {
            str(o.get("key")): o.get("inputs") for o in extra.get("options") or [] if isinstance(o, dict)
        }
        combo = Widget(name, default=next(iter(choices), UNDEFINED), choices=choices)
        return [combo, *_choice_widgets(combo, combo.default)]
    out = [Widget(name, default=_default(kind, extra))]
    control = extra.get("control_after_generate")
    if widget_type == "INT" and (control if control is not None else name in ("seed", "noise_seed")):
        out.append(Widget(str(control) if isinstance(control, str) else "control_after_generate", False))
    elif widget_type == "COMBO" and control:
        out.append(Widget(str(control) if isinstance(control, str) else "control_after_generate", False))
        out.append(Widget("control_filter_list", False))
    return out


def _choice_widgets(combo: Widget, value: Any) -> list[Widget]:
    """The widgets a dynamic combo adds for the chosen option (required inputs, then optional)."""
    spec = (combo.choices or {}).get(value) if isinstance(value, str) else None
    out: list[Widget] = []
    for section in ("required", "optional"):
        for key, item in ((spec or {}).get(section) or {}).items():
            if isinstance(item, list) and item:
                extra = item[1] if len(item) > 1 and isinstance(item[1], dict) else {}
                out += _widgets_for(f"{combo.name}.{key}", item[0], extra)
    return out


class NodeWidgets:
    """The widget layout of one node definition, worked out once per conversion."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.specs = _specs(info)
        self.widgets = [w for name, kind, extra, _o in self.specs for w in _widgets_for(name, kind, extra)]
        names = {w.name for w in self.widgets}
        self._originals = [
            (n, extra) for n, _k, extra, _o in self.specs if n in names or extra.get("forceInput")
        ]

    def migrate(self, values: list[Any]) -> list[Any]:
        """Drop values saved for inputs that have since become sockets (``forceInput``), as the frontend does."""
        originals = self._originals
        count = sum(
            2 if extra.get("control_after_generate") or n in ("seed", "noise_seed") else 1
            for n, extra in originals
        )
        if count != len(values):
            return values
        return [
            v for i, v in enumerate(values) if i >= len(originals) or not originals[i][1].get("forceInput")
        ]

    def assign(self, saved: Any) -> list[tuple[Widget, Any]]:
        """Every widget of the node with the value it has after loading ``widgets_values``.

        Values go to widgets in order; setting a dynamic combo swaps the widgets after it for those
        of the chosen option, which then take the next values (as the frontend's loader does).
        """
        widgets = self.widgets
        by_name = saved if isinstance(saved, dict) else None  # packs that save a dict restore by name
        values = self.migrate(saved) if isinstance(saved, list) else []
        out: list[tuple[Widget, Any]] = []
        i = 0
        while i < len(widgets):
            widget = widgets[i]
            if by_name is not None:
                value = by_name.get(widget.name, widget.default)
            else:
                value = values[i] if i < len(values) else widget.default
            out.append((widget, value))
            if widget.choices is not None:
                prefix = widget.name + "."
                rest = [w for w in widgets[i + 1 :] if not w.name.startswith(prefix)]
                widgets = [*widgets[: i + 1], *_choice_widgets(widget, value), *rest]
            i += 1
        return out


def align_widget_names(names: list[str], widgets: list[Any]) -> list[tuple[str | None, Any]] | None:
    """Pair widget names taken from a node's inputs with its values, or None when the counts disagree.

    Used where no definition of the node is at hand: control values after a seed are named as such.
    Recent frontends list every widget in ``inputs``; older ones only widgets turned into inputs.
    """
    out: list[tuple[str | None, Any]] = []
    k = 0
    for value in widgets:
        prev = out[-1][0] if out else None
        if prev in ("seed", "noise_seed") and isinstance(value, str) and value in CONTROL_VALUES:
            out.append(("control_after_generate", value))
        elif k < len(names):
            out.append((names[k], value))
            k += 1
        else:
            out.append((None, value))
    unnamed = sum(1 for name, _ in out if name is None)
    # One unnamed trailing slot is normal (LoadImage's upload button); more means misalignment.
    if k != len(names) or unnamed > 1 or (unnamed == 1 and out[-1][0] is not None):
        return None
    return out
