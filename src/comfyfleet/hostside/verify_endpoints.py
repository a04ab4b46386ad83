"""Endpoint checks of a comfyui-api service, run inside its container (stock python3, stdlib only).

    python3 verify_endpoints.py PORT KEY_FILE WORKFLOWS_DIR TIMEOUT DISABLED_DIR

/health, /ready (waited for up to TIMEOUT s), every workflow's schema in /openapi.json, one
generation per served workflow with its defaults, and the 404 "stopped" answer of every
stopped one. Prints one line ``VERIFY {json}``; the API key is read here, never passed.
comfyfleet.operations.api judges the result.
"""

import base64
import glob
import json
import os
import sys
import time
import urllib.error
import urllib.request

port, keyfile, wfdir, timeout, disdir = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
base = "http://127.0.0.1:" + port
key = ""
if os.path.exists(keyfile):
    key = next((ln.split()[0] for ln in open(keyfile) if ln.strip() and not ln.startswith("#")), "")


def call(method, path, body=None, t=30.0):
    req = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=t) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")[:300]
    except Exception as e:
        return 0, f"{type(e).__name__}: {e}"


def why(body, limit=2000):
    # Every message of an error body, the cause included: ComfyUI puts it last (node_errors' details).
    parts = []

    def walk(v, key=""):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, str(k))
        elif isinstance(v, list):
            for x in v:
                walk(x, key)
        elif isinstance(v, str) and v.strip() and key not in ("type", "status", "id") and v not in parts:
            parts.append(v.strip())

    walk(body)
    text = " | ".join(parts) if parts else json.dumps(body)
    return text if len(text) <= limit else text[: limit - 1] + "…"


out = {"health": None, "ready": None, "workflows": []}
out["health"] = call("GET", "/health")
deadline = time.time() + timeout
while True:
    out["ready"] = call("GET", "/ready")
    if out["ready"][0] == 200 or time.time() > deadline:
        break
    time.sleep(2)
status, spec = call("GET", "/openapi.json")
paths = spec.get("paths", {}) if status == 200 and isinstance(spec, dict) else {}
names = set(
    os.path.basename(p)[:-5]
    for p in glob.glob(os.path.join(wfdir, "*.json"))
    if not p.endswith((".lock.json", ".manifest.json"))
)
stopped = set(n for n in (os.listdir(disdir) if os.path.isdir(disdir) else []) if not n.startswith("."))
for name in sorted(names | stopped):
    row = {
        "name": name,
        "schema": "/workflows/" + name in paths,
        "status": None,
        "outputs": 0,
        "bytes": 0,
        "seconds": None,
        "error": "",
        "stopped": name in stopped,
    }
    if row["stopped"]:
        # Not generated with; checked to answer 404 "stopped" (an API that ignores markers would serve it).
        row["status"], body = call("POST", "/workflows/" + name, {"input": {"no_such_input": 0}})
        row["error"] = (
            "" if isinstance(body, dict) and body.get("status") == "stopped" else json.dumps(body)[:300]
        )
    elif row["schema"]:
        t0 = time.time()
        row["status"], job = call("POST", "/workflows/" + name, {"input": {}}, timeout)
        row["seconds"] = round(time.time() - t0, 2)
        if row["status"] == 200 and isinstance(job, dict):
            files = [o for o in job.get("outputs", []) if o.get("base64")]
            row["outputs"] = len(job.get("outputs", []))
            row["bytes"] = sum(len(base64.b64decode(o["base64"])) for o in files)
        else:
            row["error"] = why(job)
    out["workflows"].append(row)
print("VERIFY " + json.dumps(out))
