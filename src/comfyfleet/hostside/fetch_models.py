#!/usr/bin/env python3
"""Download the model files of a plan into ComfyUI's models folder, on the GPU host.

Uploaded by the `download-models` task and run with the runtime's Python. Standard
library only; huggingface_hub is used when it is importable.

Plan (JSON file given with --plan)::

    {"models_dir": "/data/comfyui/models", "staging_dir": "/data/.comfyfleet/downloads",
     "state_file": "/data/.comfyfleet/model-hashes.json", "parallel": 3,
     "hf_endpoint": null, "civitai_endpoint": null,
     "items": [{"filename": "sd/x.safetensors", "folder": "checkpoints",
                "url": "https://huggingface.co/org/repo/resolve/main/x.safetensors",
                "sha256": null, "size": null}]}

Tokens never come through argv or the environment: with --secrets-stdin a JSON object
``{"HF_TOKEN": ..., "CIVITAI_API_TOKEN": ...}`` is read from standard input.

Guarantees: bytes go to ``<staging_dir>/<folder>/<filename>.part`` (outside models/),
a killed download resumes there with an HTTP Range request, the sha256 is checked
(the manifest's, else the one the server publishes), and only a complete, verified
file is renamed into ``models/<folder>/<filename>``. A file already there with the
right hash is left alone. Bytes are written with O_DIRECT where the filesystem takes
it (COMFYFLEET_FETCH_NO_DIRECT=1 forces the page cache); the .part is fsynced before
the rename either way. Output: ``progress:`` lines on stderr and one line
``RESULT {json}`` (or ``CHECK {json}`` with --check) on stdout. Exit 1 when an item
failed.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import json
import mmap
import os
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

CHUNK = 1024 * 1024
# Download pipeline: buffers in flight (each CHUNK), the block size O_DIRECT writes
# align to, and how many page-cache bytes may pile up before a background fdatasync.
_BUFFERS = 8
_ALIGN = 4096
_SYNC_STEP = 64 * 1024 * 1024
USER_AGENT = "comfyfleet-fetch/1"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
CIVITAI_DEFAULT_ENDPOINT = "https://civitai.com"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# Same rule as comfyfleet.safety, repeated because this file runs on hosts alone.
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 ._+@,=~%#\[\]-]*$")


class FetchError(Exception):
    """A download failed with a message an operator can act on."""


class StaleRange(Exception):
    """The server ignored or refused the Range request: start the file again."""


# ---------------------------------------------------------------------------
# paths and hashes


def safe_relpath(name: str) -> str:
    """Return name with '/' separators, or raise when it could leave its folder."""
    norm = name.replace("\\", "/")
    parts = norm.split("/")
    if not norm or norm.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise FetchError(f"unsafe model path {name!r}")
    if any(not _SAFE_PART.match(p) for p in parts) or any(ord(c) < 32 for c in norm):
        raise FetchError(f"unsafe model path {name!r}")
    return norm


def inside(root: str, path: str) -> bool:
    root_real = os.path.realpath(root)
    return os.path.commonpath([root_real, os.path.realpath(path)]) == root_real


class HashCache:
    """sha256 of files already in place, keyed by path, size and mtime (no-op runs stay fast)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, list[Any]] = {}
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError):
                self.data = {}

    def sha256(self, path: str) -> str:
        st = os.stat(path)
        with self.lock:
            hit = self.data.get(path)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return str(hit[2])
        digest = file_sha256(path)
        self.remember(path, digest)
        return digest

    def remember(self, path: str, digest: str) -> None:
        st = os.stat(path)
        with self.lock:
            self.data[path] = [st.st_size, st.st_mtime_ns, digest]

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with self.lock, open(tmp, "w") as f:
            json.dump({k: v for k, v in self.data.items() if os.path.exists(k)}, f)
        os.replace(tmp, self.path)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                return h.hexdigest()
            h.update(block)


# ---------------------------------------------------------------------------
# sources


def redact(url: str) -> str:
    """The URL without its query string (presigned URLs and tokens live there)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def parse_hf_url(url: str) -> tuple[str, str, str, str] | None:
    """(repo_type, repo_id, revision, path) for huggingface.co resolve/blob URLs."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("huggingface.co", "hf.co", "www.huggingface.co"):
        return None
    segs = [urllib.parse.unquote(s) for s in parts.path.strip("/").split("/")]
    repo_type = "model"
    if segs and segs[0] in ("datasets", "spaces"):
        repo_type = segs[0][:-1]
        segs = segs[1:]
    if len(segs) < 5 or segs[2] not in ("resolve", "blob"):
        return None
    return repo_type, f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:])


def parse_civitai(url: str) -> tuple[str, str] | None:
    """('version', id) or ('model', id) for civitai.com URLs and civitai:ID shorthands."""
    if url.startswith("civitai:"):
        return ("version", url.split(":", 1)[1]) if url.split(":", 1)[1].isdigit() else None
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or not parts.hostname.endswith("civitai.com"):
        return None
    query = urllib.parse.parse_qs(parts.query)
    if query.get("modelVersionId", [""])[0].isdigit():
        return "version", query["modelVersionId"][0]
    m = re.match(r"^/api/download/models/(\d+)", parts.path)
    if m:
        return "version", m.group(1)
    m = re.match(r"^/api/v1/model-versions/(\d+)", parts.path)
    if m:
        return "version", m.group(1)
    m = re.match(r"^/models/(\d+)", parts.path)
    if m:
        return "model", m.group(1)
    return None


def hf_hub_module() -> Any:
    """huggingface_hub when importable (and not switched off for tests), else None."""
    if os.environ.get("COMFYFLEET_FETCH_NO_HF_HUB"):
        return None
    try:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


class Source:
    """Where to fetch one file: final URL, request headers, and what the server says it is."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        sha256: str | None,
        size: int | None,
        via: str,
        denied_hint: str | None = None,
    ) -> None:
        self.url = url
        self.headers = headers
        self.sha256 = sha256
        self.size = size
        self.via = via
        self.denied_hint = denied_hint  # what to tell the operator on 401/403


class Resolver:
    """Turns manifest URLs into Sources (HF, CivitAI, any http/https URL)."""

    def __init__(self, plan: dict[str, Any], secrets: dict[str, str]) -> None:
        self.hf_endpoint = (plan.get("hf_endpoint") or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
        self.civitai_endpoint = (
            plan.get("civitai_endpoint") or os.environ.get("CIVITAI_ENDPOINT") or CIVITAI_DEFAULT_ENDPOINT
        ).rstrip("/")
        self.hf_token = secrets.get("HF_TOKEN") or None
        self.civitai_token = secrets.get("CIVITAI_API_TOKEN") or None
        self._hub: Any = False  # imported on the first Hugging Face URL: it costs startup time

    @property
    def hub(self) -> Any:
        """huggingface_hub (or None), imported on first use."""
        if self._hub is False:
            self._hub = hf_hub_module()
        return self._hub

    def resolve(self, item: dict[str, Any]) -> Source:
        url = item.get("url") or ""
        hf = parse_hf_url(url)
        if hf:
            return self._hf(item, *hf)
        civ = parse_civitai(url)
        if civ:
            return self._civitai(item, *civ)
        if urllib.parse.urlsplit(url).scheme in ("http", "https"):
            return Source(url, {}, None, None, "http")
        raise FetchError(f"{item['filename']}: no download URL (add one in workflows/overrides.yaml)")

    def _hf(self, item: dict[str, Any], repo_type: str, repo_id: str, revision: str, path: str) -> Source:
        name = item["filename"]
        headers = {"Authorization": f"Bearer {self.hf_token}"} if self.hf_token else {}
        if self.hub is not None:
            from huggingface_hub import errors as hf_errors

            url = self.hub.hf_hub_url(repo_id, path, repo_type=repo_type, revision=revision, endpoint=self.hf_endpoint)
            try:
                meta = self.hub.get_hf_file_metadata(url, token=self.hf_token or False, endpoint=self.hf_endpoint)
            except hf_errors.GatedRepoError:
                raise FetchError(self._gated(name, repo_id)) from None
            except hf_errors.RepositoryNotFoundError:
                if not self.hf_token:
                    raise FetchError(self._gated(name, repo_id)) from None
                raise FetchError(f"{name}: Hugging Face repo {repo_id} not found or HF_TOKEN has no access") from None
            except hf_errors.EntryNotFoundError:
                raise FetchError(f"{name}: {path} not found in Hugging Face repo {repo_id}@{revision}") from None
            except hf_errors.HfHubHTTPError as exc:
                raise FetchError(f"{name}: Hugging Face answered {exc.response.status_code} for {redact(url)}") from None
            except OSError as exc:
                raise FetchError(f"{name}: cannot reach {self.hf_endpoint}: {exc}") from None
            sha = meta.etag if meta.etag and _HEX64.match(meta.etag) else None
            # The Authorization header goes only to the hub itself, not to a CDN it redirects to.
            same_host = urllib.parse.urlsplit(meta.location).netloc == urllib.parse.urlsplit(url).netloc
            return Source(meta.location, headers if same_host else {}, sha, meta.size, "huggingface_hub")
        quoted = "/".join(urllib.parse.quote(p) for p in path.split("/"))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hf_endpoint}/{prefix}{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"
        return Source(url, headers, None, None, "http (huggingface_hub not installed)", self._gated(name, repo_id))

    def _gated(self, name: str, repo_id: str) -> str:
        if self.hf_token:
            return f"{name}: Hugging Face repo {repo_id} is gated and HF_TOKEN has no access to it: accept its terms on huggingface.co"
        return f"{name}: Hugging Face repo {repo_id} is gated or private: set HF_TOKEN on the operator's machine"

    def _civitai(self, item: dict[str, Any], kind: str, ident: str) -> Source:
        name = item["filename"]
        headers = {"Authorization": f"Bearer {self.civitai_token}"} if self.civitai_token else {}
        if kind == "model":
            info = self._civitai_json(f"/api/v1/models/{ident}", headers, name)
            versions = info.get("modelVersions") or []
            if not versions:
                raise FetchError(f"{name}: CivitAI model {ident} has no versions")
            ident = str(versions[0]["id"])
        sha = None
        try:
            info = self._civitai_json(f"/api/v1/model-versions/{ident}", headers, name)
            files = info.get("files") or []
            chosen = next((f for f in files if f.get("primary")), files[0] if files else None)
            if chosen:
                sha = (chosen.get("hashes") or {}).get("SHA256")
                sha = sha.lower() if sha and _HEX64.match(sha) else None
        except FetchError:
            # Metadata is a bonus (hash to verify against); the download answer decides.
            pass
        hint = (
            f"{name}: CivitAI model version {ident} needs a token: set CIVITAI_API_TOKEN on the operator's machine"
            if not self.civitai_token
            else f"{name}: CivitAI refused CIVITAI_API_TOKEN for model version {ident}"
        )
        return Source(f"{self.civitai_endpoint}/api/download/models/{ident}", headers, sha, None, "civitai", hint)

    def _civitai_json(self, path: str, headers: dict[str, str], name: str) -> dict[str, Any]:
        req = urllib.request.Request(self.civitai_endpoint + path, headers={**headers, "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return dict(json.load(resp))
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{name}: CivitAI answered {exc.code} for {path}") from None
        except (OSError, ValueError) as exc:
            raise FetchError(f"{name}: CivitAI metadata for {path} unreadable: {exc}") from None


# ---------------------------------------------------------------------------
# transfer


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def open_following(url: str, headers: dict[str, str], name: str, gated_hint: str | None) -> Any:
    """GET url, following redirects by hand so credentials never go to another host."""
    for _ in range(10):
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise FetchError(f"{name}: only http(s) downloads are allowed, not {redact(url)}")
        req = urllib.request.Request(url, headers={**headers, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        try:
            return _opener.open(req, timeout=60)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                new = urllib.parse.urljoin(url, exc.headers["Location"])
                if urllib.parse.urlsplit(new).scheme not in ("http", "https"):
                    exc.close()
                    raise FetchError(f"{name}: {redact(url)} redirects to a non-HTTP location; refused") from None
                if urllib.parse.urlsplit(new).netloc != urllib.parse.urlsplit(url).netloc:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                exc.close()
                url = new
                continue
            if exc.code == 416:
                exc.close()
                raise StaleRange() from None
            if exc.code in (401, 403) and gated_hint:
                raise FetchError(gated_hint) from None
            raise FetchError(f"{name}: server answered {exc.code} for {redact(url)}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{name}: cannot download {redact(url)}: {exc}") from None
    raise FetchError(f"{name}: too many redirects from {redact(url)}")


class Progress:
    """Prints one progress line per active file every few seconds (stderr)."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.lock = threading.Lock()
        self.active: dict[str, list[Any]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, key: str, total: int | None, done: int) -> None:
        with self.lock:
            self.active[key] = [done, total, time.monotonic(), done]

    def add(self, key: str, n: int) -> None:
        with self.lock:
            self.active[key][0] += n

    def finish(self, key: str) -> None:
        with self.lock:
            entry = self.active.pop(key, None)
        if entry:
            secs = max(time.monotonic() - entry[2], 1e-6)
            mb = (entry[0] - entry[3]) / 1e6
            log(f"progress: {key} done {entry[0] / 1e6:.1f} MB ({mb / secs:.1f} MB/s)")

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                rows = [(k, *v) for k, v in self.active.items()]
            for key, done, total, started, first in rows:
                rate = (done - first) / 1e6 / max(time.monotonic() - started, 1e-6)
                pct = f"{100 * done / total:.0f}%" if total else f"{done / 1e6:.1f} MB"
                log(f"progress: {key} {pct} {rate:.1f} MB/s")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Sink:
    """Writes the download at increasing offsets, preferring O_DIRECT over the page cache.

    Why O_DIRECT: a verified download already spends one core on sha256, and a buffered
    write adds a copy into the page cache plus dirty-page writeback that the final fsync
    must wait for; a direct write hands the (page-aligned) buffer to the disk instead.
    Where the filesystem refuses it (older tmpfs, some FUSE or network filesystems), writes go
    through the page cache and a helper thread fdatasyncs every _SYNC_STEP bytes so the
    fsync before rename finds little left to do. Both paths end with the same fsync.
    """

    def __init__(self, fd: int, path: str, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.direct = _open_direct(path)
        self._pending = 0
        self._sync_wanted = threading.Event()
        self._sync_error: OSError | None = None
        self._closing = False
        self._syncer: threading.Thread | None = None

    def write(self, view: memoryview) -> None:
        """Write all of view at the current offset (whole blocks direct, the rest buffered)."""
        n, pos = len(view), 0
        while pos < n:
            at = self.offset + pos
            if self.direct is not None and at % _ALIGN == 0 and n - pos >= _ALIGN:
                end = pos + (n - pos) // _ALIGN * _ALIGN
                try:
                    pos += os.pwrite(self.direct, view[pos:end], at)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    # Accepted at open, refused at write: use the page cache from now on.
                    os.close(self.direct)
                    self.direct = None
            wrote = os.pwrite(self.fd, view[pos:], at)
            pos += wrote
            self._buffered(wrote)
        self.offset += n

    def _buffered(self, n: int) -> None:
        self._pending += n
        if self._pending < _SYNC_STEP:
            return
        self._pending = 0
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, daemon=True)
            self._syncer.start()
        self._sync_wanted.set()

    def _sync_loop(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            if self._closing:
                return
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                self._sync_error = exc
                return

    def close(self) -> None:
        """Stop the helper thread and close the O_DIRECT descriptor (not fd: the caller's)."""
        self._closing = True
        if self._syncer is not None:
            self._sync_wanted.set()
            self._syncer.join()
        if self.direct is not None:
            os.close(self.direct)
            self.direct = None
        if self._sync_error is not None:
            raise self._sync_error


def _open_direct(path: str) -> int | None:
    """A second descriptor on path with O_DIRECT, or None where that is unavailable."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or os.environ.get("COMFYFLEET_FETCH_NO_DIRECT"):
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return None


class _Stage:
    """One worker thread of the copy pipeline: applies fn to each buffer, then hands it back.

    After a failure it keeps taking buffers (without applying fn) so the receiver never
    waits for a buffer that will not come back; the receiver sees .error and stops.
    """

    def __init__(self, fn: Any, release: Any) -> None:
        self.fn = fn
        self.release = release
        self.inbox: queue.Queue[tuple[Any, int] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            entry = self.inbox.get()
            if entry is None:
                return
            buf, n = entry
            if self.error is None:
                try:
                    self.fn(memoryview(buf)[:n])
                except BaseException as exc:  # noqa: BLE001 - re-raised on the receiving thread
                    self.error = exc
            self.release(buf)


def _copy_hashing(src: Any, sink: _Sink, h: Any, on_bytes: Any) -> int:
    """Copy src to sink while h hashes the same bytes: receive, hash and write in parallel.

    The receiving thread fills page-aligned buffers with readinto (no bytes objects, no
    copies in Python); each full buffer goes to a hashing thread and a writing thread at
    once and comes back to the pool when both are done. hashlib and os.pwrite release the
    GIL, so on two cores the download runs at the speed of its slowest stage instead of
    the sum of all three. Buffers of 1 MiB fit in L2 and keep the hash fast.
    """
    free: queue.Queue[Any] = queue.Queue()
    for _ in range(_BUFFERS):
        free.put(mmap.mmap(-1, CHUNK))  # anonymous mappings are page-aligned, as O_DIRECT needs
    users: dict[int, int] = {}
    users_lock = threading.Lock()

    def release(buf: Any) -> None:
        with users_lock:
            left = users[id(buf)] - 1
            if left:
                users[id(buf)] = left
                return
            del users[id(buf)]
        free.put(buf)

    stages = [_Stage(h.update, release), _Stage(sink.write, release)]
    got = 0
    # The first buffer ends where the file offset becomes block-aligned (a resumed
    # .part can end anywhere), so every later write can go direct.
    want = CHUNK - sink.offset % _ALIGN
    try:
        while not any(stage.error for stage in stages):
            buf = free.get()
            view = memoryview(buf)
            n = 0
            while n < want:
                r = src.readinto(view[n:want])
                if not r:
                    break
                n += r
            if not n:
                free.put(buf)
                break
            with users_lock:
                users[id(buf)] = len(stages)
            for stage in stages:
                stage.inbox.put((buf, n))
            got += n
            on_bytes(n)
            if n < want:
                break
            want = CHUNK
    finally:
        for stage in stages:
            stage.inbox.put(None)
        for stage in stages:
            stage.thread.join()
    for stage in stages:
        if stage.error is not None:
            raise stage.error
    return got


class Fetcher:
    """Downloads the items of one plan."""

    def __init__(self, plan: dict[str, Any], secrets: dict[str, str]) -> None:
        self.models_dir = plan["models_dir"]
        self.staging_dir = plan["staging_dir"]
        self.cache = HashCache(plan.get("state_file"))
        self._plan = plan
        self._secrets = secrets
        self._resolver: Resolver | None = None
        self.progress = Progress(float(plan.get("progress_interval", 2.0)))

    @property
    def resolver(self) -> Resolver:
        # Built on first download only: --check runs on every deploy and needs no network code.
        if self._resolver is None:
            self._resolver = Resolver(self._plan, self._secrets)
        return self._resolver

    def dest_of(self, item: dict[str, Any]) -> str:
        folder = safe_relpath(item["folder"])
        name = safe_relpath(item["filename"])
        dest = os.path.join(self.models_dir, folder, name)
        if not inside(self.models_dir, os.path.dirname(dest)):
            raise FetchError(f"{item['filename']}: would land outside {self.models_dir}")
        return dest

    def check(self, item: dict[str, Any]) -> dict[str, Any]:
        """What is in place for item: ok, missing, or wrong (with the hash found)."""
        dest = self.dest_of(item)
        out: dict[str, Any] = {"filename": item["filename"], "folder": item["folder"], "path": dest}
        if not os.path.isfile(dest):
            out["state"] = "missing"
            return out
        want = (item.get("sha256") or "").lower() or None
        size = item.get("size")
        if size is not None and os.path.getsize(dest) != size:
            out["state"] = "wrong"
            out["reason"] = f"size {os.path.getsize(dest)} != {size}"
            return out
        if want is None and not item.get("record_hash"):
            out["state"] = "ok"
            return out
        got = self.cache.sha256(dest)
        out["sha256"] = got
        out["state"] = "ok" if want in (None, got) else "wrong"
        if out["state"] == "wrong":
            out["reason"] = f"sha256 {got} != {want}"
        return out

    def fetch(self, item: dict[str, Any]) -> dict[str, Any]:
        name = item["filename"]
        result: dict[str, Any] = {"filename": name, "folder": item["folder"], "bytes_fetched": 0, "bytes_reused": 0}
        try:
            state = self.check(item)
            if state["state"] == "ok":
                result.update(status="present", sha256=state.get("sha256"))
                return result
            src = self.resolver.resolve(item)
            result["via"] = src.via
            want = (item.get("sha256") or src.sha256 or "").lower() or None
            part = os.path.join(self.staging_dir, safe_relpath(item["folder"]), safe_relpath(name) + ".part")
            os.makedirs(os.path.dirname(part), exist_ok=True)
            digest = self._transfer(src, part, want, item, result)
            if want and digest != want:
                os.unlink(part)
                raise FetchError(
                    f"{name}: sha256 mismatch (expected {want}, got {digest}); the download was discarded"
                )
            self._place(part, state["path"])
            self.cache.remember(state["path"], digest)
            result.update(status="replaced" if state["state"] == "wrong" else "downloaded", sha256=digest)
        except FetchError as exc:
            result.update(status="failed", error=str(exc))
        except OSError as exc:
            result.update(status="failed", error=f"{name}: {exc}")
        return result

    def _transfer(self, src: Source, part: str, want: str | None, item: dict[str, Any], result: dict[str, Any]) -> str:
        meta_path = part + ".json"
        identity = {"url": redact(src.url), "sha256": want}
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have:
            try:
                with open(meta_path) as f:
                    prior = json.load(f)
            except (OSError, ValueError):
                prior = {}
            # A .part from another source or another expected hash is not ours to resume.
            if prior.get("url") != identity["url"] or prior.get("sha256") != want:
                have = 0
        with open(meta_path, "w") as f:
            json.dump(identity, f)
        for _attempt in range(2):
            try:
                return self._stream(src, part, have, item, result)
            except StaleRange:
                have = 0
        raise FetchError(f"{item['filename']}: server keeps refusing the download range")

    def _stream(self, src: Source, part: str, have: int, item: dict[str, Any], result: dict[str, Any]) -> str:
        headers = dict(src.headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        resp = open_following(src.url, headers, item["filename"], src.denied_hint)
        with resp:
            status = resp.status
            if have and status != 206:
                have = 0  # the server sent the whole file: start over
            if status not in (200, 206):
                raise FetchError(f"{item['filename']}: server answered {status} for {redact(src.url)}")
            h = hashlib.sha256()
            mode = "r+b" if have else "wb"
            if have:
                with open(part, "rb") as f:
                    remaining = have
                    while remaining:
                        block = f.read(min(CHUNK, remaining))
                        if not block:
                            raise StaleRange()
                        h.update(block)
                        remaining -= len(block)
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else src.size
            key = f"{item['folder']}/{item['filename']}"
            self.progress.start(key, total, have)
            result["bytes_reused"] = have
            with open(part, mode) as out:
                out.truncate(have)
                sink = _Sink(out.fileno(), part, have)
                try:
                    got = _copy_hashing(resp, sink, h, lambda n: self.progress.add(key, n))
                finally:
                    sink.close()
                os.fsync(out.fileno())
            self.progress.finish(key)
            result["bytes_fetched"] = got
            if length and length.isdigit() and got != int(length):
                raise FetchError(f"{item['filename']}: connection closed after {got} of {length} bytes; run again to resume")
            return h.hexdigest()

    @staticmethod
    def _place(part: str, dest: str) -> None:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.chmod(part, 0o644)
        try:
            os.replace(part, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # models/ on another filesystem: copy beside the target, then rename atomically there.
            tmp = os.path.join(os.path.dirname(dest), "." + os.path.basename(dest) + ".comfyfleet-tmp")
            import shutil  # here only: imports cost every run's startup

            shutil.copyfile(part, tmp)
            os.replace(tmp, dest)
            os.unlink(part)
        try:
            os.unlink(part + ".json")
        except FileNotFoundError:
            pass


def read_secrets(args: argparse.Namespace) -> dict[str, str]:
    if not args.secrets_stdin:
        return {}
    raw = sys.stdin.read()
    data = json.loads(raw) if raw.strip() else {}
    return {k: str(v) for k, v in data.items() if k in ("HF_TOKEN", "CIVITAI_API_TOKEN") and v}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch model files of a comfyfleet plan.")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--secrets-stdin", action="store_true", help="read a JSON object of tokens from stdin")
    parser.add_argument("--check", action="store_true", help="only report what is missing or wrong")
    parser.add_argument("--parallel", type=int, default=None)
    args = parser.parse_args(argv)
    os.umask(0o022)
    with open(args.plan) as f:
        plan = json.load(f)
    secrets = read_secrets(args)
    fetcher = Fetcher(plan, secrets)
    items = plan.get("items", [])
    if args.check:
        rows = []
        for item in items:
            try:
                rows.append(fetcher.check(item))
            except FetchError as exc:
                rows.append({"filename": item.get("filename"), "folder": item.get("folder"), "state": "unsafe", "reason": str(exc)})
        fetcher.cache.save()
        print("CHECK " + json.dumps(rows), flush=True)
        return 0
    parallel = max(1, args.parallel or int(plan.get("parallel", 3)))
    fetcher.progress.thread.start()
    import concurrent.futures  # here only: --check and startup do not pay for it

    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(fetcher.fetch, items))
    fetcher.progress.stop.set()
    fetcher.cache.save()
    for r in results:
        if r["status"] == "failed":
            log(f"error: {r['error']}")
        else:
            log(f"{r['status']}: {r['folder']}/{r['filename']}")
    print("RESULT " + json.dumps(results), flush=True)
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
