"""Prompt validation and execution with ComfyUI's error shapes, frames and result cache."""

from __future__ import annotations

import copy
import heapq
import json
import logging
import os
import threading
import time
import traceback
from typing import Any

import nodes
from comfy import model_management
from comfy import utils as comfy_utils

MAXIMUM_HISTORY_SIZE = 10000


def missing_node_style() -> str:
    """'missing_node_type' (recent builds, default) or 'invalid_prompt' (0.8.0 and older)."""
    return os.environ.get("COMFYUI_STANDIN_MISSING_NODE", "missing_node_type")


def _input_spec(class_: type, name: str) -> tuple[Any, dict] | None:
    types = class_.INPUT_TYPES()
    for section in ("required", "optional"):
        if name in types.get(section, {}):
            spec = types[section][name]
            return spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    return None


def validate_inputs(prompt: dict, item: str, validated: dict) -> tuple[bool, list, str]:
    """Check one node's inputs (and, recursively, the nodes feeding it), like ComfyUI does."""
    if item in validated:
        return validated[item]
    node = prompt[item]
    inputs = node.get("inputs", {})
    class_type = node["class_type"]
    class_ = nodes.NODE_CLASS_MAPPINGS[class_type]
    types = class_.INPUT_TYPES()
    errors: list[dict] = []
    valid = True
    validate_fn = getattr(class_, "VALIDATE_INPUTS", None)
    validate_args: list[str] = []
    if validate_fn is not None:
        import inspect

        validate_args = [
            p for p in inspect.signature(validate_fn).parameters if p not in ("s", "self", "cls")
        ]
    checked: dict[str, Any] = {}
    all_specs = list(types.get("required", {}).items()) + [
        (k, v) for k, v in types.get("optional", {}).items() if k in inputs
    ]
    required = set(types.get("required", {}))
    for x, spec in all_specs:
        input_type = spec[0]
        extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if x not in inputs:
            if x in required:
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": f"{x}",
                        "extra_info": {"input_name": x},
                    }
                )
                valid = False
            continue
        val = inputs[x]
        if isinstance(val, list):
            if len(val) != 2 or str(val[0]) not in prompt:
                errors.append(
                    {
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": list(spec), "received_value": val},
                    }
                )
                valid = False
                continue
            o_id, o_slot = str(val[0]), val[1]
            o_class = nodes.NODE_CLASS_MAPPINGS[prompt[o_id]["class_type"]]
            if not isinstance(o_slot, int) or o_slot >= len(o_class.RETURN_TYPES):
                errors.append(
                    {
                        "type": "bad_linked_input",
                        "message": "Bad linked input, output slot out of range",
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "received_value": val},
                    }
                )
                valid = False
                continue
            received = o_class.RETURN_TYPES[o_slot]
            declared = "COMBO" if isinstance(input_type, list) else input_type
            if (
                declared != "*"
                and received != "*"
                and received != declared
                and not (isinstance(received, list) and declared == "COMBO")
            ):
                errors.append(
                    {
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{x}, received_type({received}) mismatch input_type({declared})",
                        "extra_info": {
                            "input_name": x,
                            "input_config": list(spec),
                            "received_type": received,
                            "linked_node": val,
                        },
                    }
                )
                valid = False
                continue
            r = validate_inputs(prompt, o_id, validated)
            if r[0] is False:
                valid = False
            continue
        try:
            if input_type == "INT":
                val = int(val)
            elif input_type == "FLOAT":
                val = float(val)
            elif input_type == "STRING":
                val = str(val)
            elif input_type == "BOOLEAN":
                val = bool(val)
        except Exception as ex:
            errors.append(
                {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {input_type} value",
                    "details": f"{x}, {val}, {ex}",
                    "extra_info": {
                        "input_name": x,
                        "input_config": list(spec),
                        "received_value": val,
                        "exception_message": str(ex),
                    },
                }
            )
            valid = False
            continue
        checked[x] = val
        if input_type in ("INT", "FLOAT"):
            if "min" in extra and val < extra["min"]:
                errors.append(
                    {
                        "type": "value_smaller_than_min",
                        "message": f"Value {val} smaller than min of {extra['min']}",
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": list(spec), "received_value": val},
                    }
                )
                valid = False
                continue
            if "max" in extra and val > extra["max"]:
                errors.append(
                    {
                        "type": "value_bigger_than_max",
                        "message": f"Value {val} bigger than max of {extra['max']}",
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": list(spec), "received_value": val},
                    }
                )
                valid = False
                continue
        if x in validate_args:
            continue
        if isinstance(input_type, list) or input_type == "COMBO":
            options = extra.get("options", []) if input_type == "COMBO" else input_type
            if val not in options:
                input_config: Any = list(spec)
                if len(options) > 20:
                    list_info = f"(list of length {len(options)})"
                    input_config = None
                else:
                    list_info = str(options)
                errors.append(
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"{x}: '{val}' not in {list_info}",
                        "extra_info": {"input_name": x, "input_config": input_config, "received_value": val},
                    }
                )
                valid = False
    if validate_fn is not None and valid:
        args = {a: checked.get(a, inputs.get(a)) for a in validate_args if a in inputs}
        ret = validate_fn(**args)
        if ret is not True:
            for x in args:
                details = f"{x}" + ("" if ret is False else f" - {ret}")
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": details,
                        "extra_info": {"input_name": x},
                    }
                )
            valid = False
    result = (valid and not errors, errors, item)
    validated[item] = result
    return result


def validate_prompt(prompt: Any) -> tuple[bool, dict | None, list[str], dict]:
    """(valid, error, outputs to execute, node_errors) for an API-format graph."""
    if not isinstance(prompt, dict):
        return (
            False,
            {
                "type": "invalid_prompt",
                "message": "Prompt is not a dictionary",
                "details": "",
                "extra_info": {},
            },
            [],
            {},
        )
    outputs = set()
    for x, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return (
                False,
                {
                    "type": "invalid_prompt",
                    "message": "Cannot execute because a node is missing the class_type property.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                },
                [],
                {},
            )
        class_type = node["class_type"]
        class_ = nodes.NODE_CLASS_MAPPINGS.get(class_type)
        if class_ is None:
            if missing_node_style() == "invalid_prompt":
                return (
                    False,
                    {
                        "type": "invalid_prompt",
                        "message": f"Cannot execute because node {class_type} does not exist.",
                        "details": f"Node ID '#{x}'",
                        "extra_info": {},
                    },
                    [],
                    {},
                )
            title = (node.get("_meta") or {}).get("title", class_type)
            return (
                False,
                {
                    "type": "missing_node_type",
                    "message": f"Node '{title}' not found. The custom node may not be installed.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {"node_id": x, "class_type": class_type, "node_title": title},
                },
                [],
                {},
            )
        if getattr(class_, "OUTPUT_NODE", False) is True:
            outputs.add(x)
    if not outputs:
        return (
            False,
            {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            },
            [],
            {},
        )
    good_outputs: list[str] = []
    node_errors: dict[str, dict] = {}
    validated: dict = {}
    for o in sorted(outputs):
        try:
            ok, _, _ = validate_inputs(prompt, o, validated)
        except Exception as ex:
            logging.error(traceback.format_exc())
            validated[o] = (
                False,
                [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(ex),
                        "extra_info": {
                            "exception_type": type(ex).__name__,
                            "traceback": traceback.format_tb(ex.__traceback__),
                        },
                    }
                ],
                o,
            )
            ok = False
        if ok:
            good_outputs.append(o)
            continue
        logging.error(f"Failed to validate prompt for output {o}:")
        for node_id, (nvalid, reasons, _) in validated.items():
            if nvalid is not True and reasons:
                entry = node_errors.setdefault(
                    node_id,
                    {"errors": reasons, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]},
                )
                if o not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(o)
    if not good_outputs:
        details = "\n".join(
            f"{e['message']}: {e['details']}" for ne in node_errors.values() for e in ne["errors"]
        )
        return (
            False,
            {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": details,
                "extra_info": {},
            },
            [],
            node_errors,
        )
    return True, None, good_outputs, node_errors


class PromptQueue:
    """Pending prompts ordered by number, the running ones, and the history of finished ones."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.task_counter = 0
        self.queue: list[tuple] = []
        self.currently_running: dict[int, tuple] = {}
        self.history: dict[str, dict] = {}
        server.prompt_queue = self

    def put(self, item: tuple) -> None:
        with self.mutex:
            heapq.heappush(self.queue, item)
            self.server.queue_updated()
            self.not_empty.notify()

    def get(self) -> tuple[tuple, int]:
        with self.not_empty:
            while not self.queue:
                self.not_empty.wait()
            item = heapq.heappop(self.queue)
            i = self.task_counter
            self.currently_running[i] = copy.deepcopy(item)
            self.task_counter += 1
            self.server.queue_updated()
            return item, i

    def task_done(self, item_id: int, outputs: dict, status: dict, meta: dict) -> None:
        with self.mutex:
            prompt = self.currently_running.pop(item_id)
            if len(self.history) > MAXIMUM_HISTORY_SIZE:
                self.history.pop(next(iter(self.history)))
            self.history[prompt[1]] = {
                "prompt": list(prompt),
                "outputs": outputs,
                "status": status,
                "meta": meta,
            }
            self.server.queue_updated()

    def get_current_queue(self) -> tuple[list, list]:
        with self.mutex:
            return [list(x) for x in self.currently_running.values()], [list(x) for x in sorted(self.queue)]

    def get_tasks_remaining(self) -> int:
        with self.mutex:
            return len(self.queue) + len(self.currently_running)

    def wipe_queue(self) -> None:
        with self.mutex:
            self.queue = []
            self.server.queue_updated()

    def delete_queue_item(self, prompt_id: str) -> bool:
        with self.mutex:
            for i, x in enumerate(self.queue):
                if x[1] == prompt_id:
                    self.queue.pop(i)
                    heapq.heapify(self.queue)
                    self.server.queue_updated()
                    return True
            return False

    def running_prompt_ids(self) -> list[str]:
        with self.mutex:
            return [x[1] for x in self.currently_running.values()]

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict:
        with self.mutex:
            if prompt_id is not None:
                return (
                    {prompt_id: copy.deepcopy(self.history[prompt_id])} if prompt_id in self.history else {}
                )
            keys = list(self.history)
            if offset < 0 and max_items is not None:
                offset = len(keys) - max_items
            offset = max(offset, 0)
            keys = keys[offset:] if max_items is None else keys[offset : offset + max_items]
            return {k: copy.deepcopy(self.history[k]) for k in keys}

    def wipe_history(self) -> None:
        with self.mutex:
            self.history = {}

    def delete_history_item(self, prompt_id: str) -> None:
        with self.mutex:
            self.history.pop(prompt_id, None)


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:200]


class PromptExecutor:
    """Runs one graph at a time, node by node, with a result cache kept from the previous prompt."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.cache: dict[str, tuple[Any, dict | None]] = {}
        self.status_messages: list = []
        self.success = True
        self.history_result: dict = {}

    def reset(self) -> None:
        self.cache = {}

    def add_message(self, event: str, data: dict, broadcast: bool) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append((event, data))
        if self.server.client_id is not None or broadcast:
            self.server.send_sync(event, data, self.server.client_id)

    def _keep_ui(self, node_id: str, ui: dict) -> None:
        """Record a node's UI output in the prompt's history entry, as ComfyUI does."""
        self.history_result["outputs"][node_id] = ui
        self.history_result["meta"][node_id] = {
            "node_id": node_id,
            "display_node": node_id,
            "parent_node": None,
            "real_node_id": node_id,
        }

    def _progress(self, prompt_id: str, node_id: str, value: int, total: int, preview: object) -> None:
        """A progress frame, then the image the bar carried (if any) as a binary frame (ComfyUI's hook)."""
        self.server.send_sync(
            "progress",
            {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id},
            self.server.client_id,
        )
        if preview is not None:
            self.server.send_preview(preview, prompt_id, node_id)

    def _send_executed(self, node_id: str, ui: dict | None, prompt_id: str) -> None:
        """The `executed` websocket message to the prompt's client, if it has one."""
        if self.server.client_id is not None:
            self.server.send_sync(
                "executed",
                {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                self.server.client_id,
            )

    def _signature(self, prompt: dict, node_id: str, memo: dict) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt[node_id]
        class_ = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
        parts: list[Any] = [node["class_type"]]
        for k in sorted(node.get("inputs", {})):
            v = node["inputs"][k]
            if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt:
                parts.append((k, self._signature(prompt, str(v[0]), memo), v[1]))
            else:
                parts.append((k, _json_safe(v)))
        is_changed = getattr(class_, "IS_CHANGED", None)
        if is_changed is not None:
            try:
                args = {k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)}
                parts.append(("IS_CHANGED", _json_safe(is_changed(**args))))
            except Exception:
                parts.append(("IS_CHANGED", time.time()))
        sig = json.dumps(parts, sort_keys=True, default=str)
        memo[node_id] = sig
        return sig

    def _order(self, prompt: dict, outputs: list[str]) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for v in prompt[n].get("inputs", {}).values():
                if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt:
                    visit(str(v[0]))
            order.append(n)

        for o in outputs:
            visit(o)
        return order

    def execute(self, prompt: dict, prompt_id: str, extra_data: dict, execute_outputs: list[str]) -> None:
        """Execute the nodes the outputs need, sending ComfyUI's frames as it goes."""
        self.status_messages = []
        self.history_result = {"outputs": {}, "meta": {}}
        self.server.client_id = extra_data.get("client_id")
        model_management.interrupt_current_processing(False)
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        memo: dict[str, str] = {}
        order = self._order(prompt, execute_outputs)
        sigs = {n: self._signature(prompt, n, memo) for n in order}
        cached = [n for n in prompt if n in sigs and sigs[n] in self.cache]
        self.add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id}, broadcast=False)
        results: dict[str, Any] = {}
        executed: list[str] = []
        delay = float(os.environ.get("COMFYUI_STANDIN_NODE_DELAY", "0") or 0)
        current: str | None = None
        current_inputs: dict = {}
        try:
            for node_id in order:
                current = node_id
                node = prompt[node_id]
                class_ = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
                if sigs[node_id] in self.cache:
                    value, ui = self.cache[sigs[node_id]]
                    results[node_id] = value
                    if ui is not None:
                        self._keep_ui(node_id, ui)
                    self._send_executed(node_id, ui, prompt_id)
                    continue
                self.server.last_node_id = node_id
                if self.server.client_id is not None:
                    self.server.send_sync(
                        "executing",
                        {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                        self.server.client_id,
                    )
                current_inputs = self._inputs(prompt, node_id, class_, results, extra_data)
                if delay and not getattr(class_, "STANDIN_OWN_DELAY", False):
                    model_management.interruptible_sleep(delay)
                model_management.throw_exception_if_processing_interrupted()
                comfy_utils.set_progress_bar_global_hook(
                    lambda value, total, preview, nid, _n=node_id: self._progress(
                        prompt_id, nid or _n, value, total, preview
                    )
                )
                obj = class_()
                ret = getattr(obj, class_.FUNCTION)(**current_inputs)
                ui = None
                if isinstance(ret, dict):
                    ui = ret.get("ui")
                    value = tuple(ret.get("result", ()))
                else:
                    value = tuple(ret) if ret is not None else ()
                results[node_id] = value
                self.cache[sigs[node_id]] = (value, ui)
                executed.append(node_id)
                if ui is not None:
                    self._keep_ui(node_id, ui)
                    self._send_executed(node_id, ui, prompt_id)
        except model_management.InterruptProcessingException:
            logging.info("Processing interrupted")
            self.success = False
            self.add_message(
                "execution_interrupted",
                {
                    "prompt_id": prompt_id,
                    "node_id": current,
                    "node_type": prompt[current]["class_type"] if current else None,
                    "executed": executed,
                },
                broadcast=True,
            )
            return
        except Exception as ex:
            tb = traceback.format_tb(ex.__traceback__)
            logging.error(f"!!! Exception during processing !!! {ex}")
            logging.error("".join(traceback.format_exception(type(ex), ex, ex.__traceback__)))
            self.success = False
            self.add_message(
                "execution_error",
                {
                    "prompt_id": prompt_id,
                    "node_id": current,
                    "node_type": prompt[current]["class_type"] if current else None,
                    "executed": executed,
                    "exception_message": str(ex),
                    "exception_type": type(ex).__module__ + "." + type(ex).__name__
                    if type(ex).__module__ != "builtins"
                    else type(ex).__name__,
                    "traceback": tb,
                    "current_inputs": {
                        k: [_json_safe(v)]
                        for k, v in current_inputs.items()
                        if not isinstance(v, (list, dict))
                    },
                    "current_outputs": {},
                },
                broadcast=False,
            )
            return
        finally:
            comfy_utils.set_progress_bar_global_hook(None)
            # The classic cache keeps only what the last prompt used.
            used = set(sigs.values())
            self.cache = {k: v for k, v in self.cache.items() if k in used}
        self.success = True
        self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)

    def _inputs(self, prompt: dict, node_id: str, class_: type, results: dict, extra_data: dict) -> dict:
        types = class_.INPUT_TYPES()
        given = prompt[node_id].get("inputs", {})
        out: dict[str, Any] = {}
        for section in ("required", "optional"):
            for name, spec in types.get(section, {}).items():
                if name not in given:
                    continue
                v = given[name]
                if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt:
                    out[name] = results[str(v[0])][v[1]]
                elif spec[0] == "INT":
                    out[name] = int(v)
                elif spec[0] == "FLOAT":
                    out[name] = float(v)
                else:
                    out[name] = v
        for name, kind in types.get("hidden", {}).items():
            if kind == "PROMPT":
                out[name] = prompt
            elif kind == "EXTRA_PNGINFO":
                out[name] = extra_data.get("extra_pnginfo")
            elif kind == "UNIQUE_ID":
                out[name] = node_id
        return out


def prompt_worker(q: PromptQueue, server: Any) -> None:
    """The execution thread: take the next prompt, run it, record it, say 'executing: null'."""
    e = PromptExecutor(server)
    server.executor = e
    while True:
        item, item_id = q.get()
        prompt_id = item[1]
        server.last_prompt_id = prompt_id
        if server.free_memory_requested:
            e.reset()
            server.free_memory_requested = False
        started = time.perf_counter()
        e.execute(item[2], prompt_id, item[3], item[4])
        status_str = "success" if e.success else "error"
        q.task_done(
            item_id,
            e.history_result["outputs"],
            {
                "status_str": status_str,
                "completed": e.success,
                "messages": [list(m) for m in e.status_messages],
            },
            e.history_result["meta"],
        )
        if server.client_id is not None:
            server.send_sync("executing", {"node": None, "prompt_id": prompt_id}, server.client_id)
        logging.info(f"Prompt executed in {time.perf_counter() - started:.2f} seconds")
