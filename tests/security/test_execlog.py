"""The execution log keeps writing through a locked database and is readable by its owner only."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from collections.abc import Callable

import httpx

from security.conftest import ADMIN, ALICE, Api, auth, wait_for


def _ids(a: Api) -> set[str]:
    rows = httpx.get(f"{a.url}/executions?limit=500", headers=auth(ADMIN), timeout=30).json()["executions"]
    return {r["id"] for r in rows if r["status"] == "completed"}


def test_writes_survive_a_database_locked_longer_than_the_busy_timeout(fresh_api: Callable[..., Api]) -> None:
    a = fresh_api()
    before = a.run(ALICE, "tiny", {"input": {"color": 401}}).json()["id"]
    wait_for(lambda: before in _ids(a))
    holder = sqlite3.connect(a.db, timeout=0, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release() -> None:
        time.sleep(6.5)  # past the 5 s busy timeout: the writer must retry, not die
        holder.rollback()
        holder.close()
        released.set()

    threading.Thread(target=release, daemon=True).start()
    during = [a.run(ALICE, "tiny", {"input": {"color": 402 + i}}).json()["id"] for i in range(3)]
    released.wait(15)
    after = a.run(ALICE, "tiny", {"input": {"color": 410}}).json()["id"]
    wait_for(lambda: {before, after, *during} <= _ids(a), timeout=20)


def test_log_file_is_owner_only(api: Api) -> None:
    api.run(ALICE, "tiny", {"input": {"color": 420}})
    for path in (api.db, api.db.with_name(api.db.name + "-wal")):
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert api.db.exists()
