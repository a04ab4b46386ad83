"""A stand-in for the `modal` command line, installed as `modal` on PATH by the command-level tests.

It answers the subcommands comfyfleet runs from a scenario file ($FAKE_MODAL_SCENARIO, JSON)
and appends every call to the scenario's log (one JSON object per line): its argv, and for
`secret create --from-json` the file's mode and content, so tests can check that secrets
never travel in argv and sit in a private file. The real CLI cannot run here (Modal is
unreachable); its output texts come from modal 1.6.4.
"""

import json
import os
import stat
import sys

TOKEN_MISSING = (
    "Error: Token missing. Could not authenticate client. If you have token credentials, see "
    "modal.com/docs/sdk/py/latest/config for setup help. If you are a new user, register an account "
    "at modal.com, then run `modal token new`."
)


def main() -> int:
    with open(os.environ["FAKE_MODAL_SCENARIO"]) as f:
        scenario = json.load(f)
    argv = sys.argv[1:]
    call = {"argv": argv}
    if scenario.get("logged_out"):
        print(TOKEN_MISSING, file=sys.stderr)
        return _log(scenario, call, 1)
    head = argv[:2]
    if argv[:1] == ["deploy"]:
        if not os.path.isfile(argv[1]):
            print(f"Error: file {argv[1]} not found", file=sys.stderr)
            return _log(scenario, call, 1)
        print(scenario.get("deploy_output", ""))
        return _log(scenario, call, scenario.get("deploy_rc", 0))
    if argv[:1] == ["run"]:
        print(scenario.get("run_output", "✓ App completed."))
        return _log(scenario, call, scenario.get("run_rc", 0))
    if head == ["secret", "list"]:
        print(
            json.dumps(
                [
                    {"name": n, "created_at": "2026-11-01 10:00 UTC", "created_by": "op", "last_used_at": "-"}
                    for n in scenario.get("secrets", [])
                ]
            )
        )
        return _log(scenario, call, 0)
    if head == ["secret", "create"]:
        path = argv[argv.index("--from-json") + 1]
        call["file_mode"] = oct(stat.S_IMODE(os.stat(path).st_mode))
        with open(path) as f:
            call["file_content"] = json.load(f)
        print(f"Created a new secret '{argv[2]}' with the keys {list(call['file_content'])}")
        return _log(scenario, call, 0)
    if head == ["app", "list"]:
        print(json.dumps(scenario.get("apps", [])))
        return _log(scenario, call, 0)
    if head == ["app", "stop"]:
        print(scenario.get("stop_output", ""), end="")
        return _log(scenario, call, scenario.get("stop_rc", 0))
    if head == ["function", "info"]:
        print(json.dumps(scenario.get("function_info", {})))
        return _log(scenario, call, 0)
    print(f"fake modal: unexpected arguments {argv}", file=sys.stderr)
    return _log(scenario, call, 3)


def _log(scenario: dict, call: dict, rc: int) -> int:
    call["rc"] = rc
    with open(scenario["log"], "a") as f:
        f.write(json.dumps(call) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
