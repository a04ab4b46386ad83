#!/usr/bin/env python3
"""Download the model files of a plan into ComfyUI's models folder, on the GPU host.

Uploaded by the `download-models` task and run with the runtime's Python. Standard
library only (Hugging Face metadata is read the way huggingface_hub reads it).

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
right hash is left alone. Bytes go through the page cache with their writeback started
while later bytes arrive (COMFYFLEET_FETCH_DIRECT=1 writes with O_DIRECT instead); the
.part is fsynced before the rename either way. Output: ``progress:`` lines on stderr and one line
``RESULT {json}`` (or ``CHECK {json}`` with --check) on stdout. Exit 1 when an item
failed.
"""

from __future__ import annotations

# Only what --check needs is imported here: it runs on every host on every deploy, so the
# network, hashing and threading machinery is imported by the functions that use it
# (tests/tiers/test_fetch_startup.py holds --check to that).
import errno
import json
import os
import re
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import http.client
    from typing import Any

CHUNK = 1024 * 1024
# Download pipeline: buffers in flight (each CHUNK), the block size O_DIRECT writes
# align to, and how many written bytes go to the disk at a time while more arrive.
_BUFFERS = 8
_ALIGN = 4096
_WRITEBACK_STEP = 8 * 1024 * 1024
# Ranged downloads: files from PARALLEL_MIN bytes up go over CONNECTIONS connections in
# SEGMENT-sized Range requests, never more than HOST_CONNECTIONS to one host at a time
# (plan keys connections_per_file, connections_per_host, parallel_min_bytes, segment_bytes,
# split_below_mbps).
SEGMENT = 8 * 1024 * 1024
PARALLEL_MIN = 64 * 1024 * 1024
CONNECTIONS = 8
HOST_CONNECTIONS = 16
# Extra connections join only when the first one runs slower than this (MB/s).
SPLIT_BELOW_MBPS = 60.0
# ... measured over at least this long a part of the first stretch (a fast link finishes
# the whole stretch sooner and is judged on all of it).
_PROBE_SECONDS = 0.1
# A cut connection is resumed this many times within one run before the item fails.
_ATTEMPTS = 4
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


class _Cut(Exception):
    """The body ended before the file did: resume from what is on disk."""


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
        self.changed = False
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
            self.changed = True

    def save(self) -> None:
        """Write the cache back when a hash was computed (a no-op check writes nothing)."""
        if not self.path or not self.changed:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with self.lock, open(tmp, "w") as f:
            json.dump({k: v for k, v in self.data.items() if os.path.exists(k)}, f)
        os.replace(tmp, self.path)


def file_sha256(path: str) -> str:
    import hashlib

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
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def parse_hf_url(url: str) -> tuple[str, str, str, str] | None:
    """(repo_type, repo_id, revision, path) for huggingface.co resolve/blob URLs."""
    import urllib.parse

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
    import urllib.parse

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
        self.hf_endpoint = (
            plan.get("hf_endpoint") or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT
        ).rstrip("/")
        self.civitai_endpoint = (
            plan.get("civitai_endpoint") or os.environ.get("CIVITAI_ENDPOINT") or CIVITAI_DEFAULT_ENDPOINT
        ).rstrip("/")
        self.hf_token = secrets.get("HF_TOKEN") or None
        self.civitai_token = secrets.get("CIVITAI_API_TOKEN") or None

    def resolve(self, item: dict[str, Any]) -> Source:
        import urllib.parse

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
        """The Hub's own metadata (what huggingface_hub's get_hf_file_metadata reads), with the standard library.

        A HEAD on the resolve URL, not followed: ``X-Linked-Etag`` / ``ETag`` is the sha256
        of an LFS file, ``X-Linked-Size`` / ``Content-Length`` its size, ``Location`` the CDN.
        (Importing huggingface_hub for this one request cost ~0.8 s of every run.)
        """
        import http.client
        import urllib.parse

        name = item["filename"]
        headers = {"Authorization": f"Bearer {self.hf_token}"} if self.hf_token else {}
        quoted = "/".join(urllib.parse.quote(p) for p in path.split("/"))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hf_endpoint}/{prefix}{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"
        try:
            with _request("HEAD", url, headers, timeout=30) as resp:
                answer, code = resp.headers, resp.status
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{name}: cannot reach {self.hf_endpoint}: {exc}") from None
        if code in _REDIRECTS and answer.get("Location"):
            location = urllib.parse.urljoin(url, answer["Location"])
        elif 200 <= code < 300:
            location = url
        else:
            raise FetchError(self._hf_refusal(name, repo_id, revision, path, url, code, answer))
        etag = (answer.get("X-Linked-Etag") or answer.get("ETag") or "").removeprefix("W/").strip('"')
        size = answer.get("X-Linked-Size") or (answer.get("Content-Length") if location == url else None)
        # The Authorization header goes only to the hub itself, not to a CDN it redirects to.
        same_host = urllib.parse.urlsplit(location).netloc == urllib.parse.urlsplit(url).netloc
        return Source(
            location,
            headers if same_host else {},
            etag.lower() if _HEX64.match(etag) else None,
            int(size) if size and size.isdigit() else None,
            "huggingface",
            self._gated(name, repo_id),
        )

    def _hf_refusal(
        self, name: str, repo_id: str, revision: str, path: str, url: str, code: int, headers: Any
    ) -> str:
        kind = headers.get("X-Error-Code", "") if headers else ""
        if kind == "GatedRepo" or (code in (401, 403) and kind != "EntryNotFound"):
            if kind == "RepoNotFound" and self.hf_token:
                return f"{name}: Hugging Face repo {repo_id} not found or HF_TOKEN has no access"
            return self._gated(name, repo_id)
        if kind == "EntryNotFound" or code == 404:
            return f"{name}: {path} not found in Hugging Face repo {repo_id}@{revision}"
        return f"{name}: Hugging Face answered {code} for {redact(url)}"

    def _gated(self, name: str, repo_id: str) -> str:
        if self.hf_token:
            return f"{name}: Hugging Face repo {repo_id} is gated and HF_TOKEN has no access to it: accept its terms on huggingface.co"
        return (
            f"{name}: Hugging Face repo {repo_id} is gated or private: set HF_TOKEN on the operator's machine"
        )

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
        return Source(
            f"{self.civitai_endpoint}/api/download/models/{ident}", headers, sha, None, "civitai", hint
        )

    def _civitai_json(self, path: str, headers: dict[str, str], name: str) -> dict[str, Any]:
        import http.client
        import urllib.parse

        url = self.civitai_endpoint + path
        try:
            for _ in range(10):
                with _request("GET", url, headers, timeout=30) as resp:
                    location = resp.headers.get("Location")
                    if 200 <= resp.status < 300:
                        return dict(json.load(resp))
                    if resp.status not in _REDIRECTS or not location:
                        raise FetchError(f"{name}: CivitAI answered {resp.status} for {path}")
                new = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(new).scheme not in ("http", "https"):
                    raise FetchError(f"{name}: CivitAI redirects {path} to a non-HTTP location; refused")
                if urllib.parse.urlsplit(new).netloc != urllib.parse.urlsplit(url).netloc:
                    headers = {}  # the token goes to CivitAI only
                url = new
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise FetchError(f"{name}: CivitAI metadata for {path} unreadable: {exc}") from None
        raise FetchError(f"{name}: CivitAI metadata for {path}: too many redirects")


# ---------------------------------------------------------------------------
# transfer


_REDIRECTS = (301, 302, 303, 307, 308)


def request_target(parts: Any) -> str:
    """The request line's target of a split URL: its path ("/" when it has none) and query."""
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _request(method: str, url: str, headers: dict[str, str], timeout: float = 60) -> Any:
    """One request on a new connection (never following redirects); the response owns the connection.

    http.client directly: urllib.request would add ~7 ms of imports to every run, and the
    ranged segments already go this way. No proxy from the environment is used.
    """
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    conn = _connect(url, timeout)
    try:
        conn.request(
            method,
            request_target(parts),
            headers={
                **headers,
                "User-Agent": USER_AGENT,
                "Accept-Encoding": "identity",
                "Connection": "close",
            },
        )
        return conn.getresponse()  # Connection: close, so the response keeps the socket and closes it
    except BaseException:
        conn.close()
        raise


def open_following(
    url: str, headers: dict[str, str], name: str, gated_hint: str | None
) -> tuple[Any, str, dict[str, str]]:
    """GET url, following redirects by hand so credentials never go to another host.

    Returns the response, the URL that answered and the headers sent to it (without the
    Authorization header when a redirect left the original host). 416 raises StaleRange.
    """
    import http.client
    import urllib.parse

    for _ in range(10):
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise FetchError(f"{name}: only http(s) downloads are allowed, not {redact(url)}")
        try:
            resp = _request("GET", url, headers)
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{name}: cannot download {redact(url)}: {exc}") from None
        code = resp.status
        if 200 <= code < 300:
            return resp, url, headers
        location = resp.headers.get("Location")
        resp.close()
        if code in _REDIRECTS and location:
            new = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(new).scheme not in ("http", "https"):
                raise FetchError(f"{name}: {redact(url)} redirects to a non-HTTP location; refused")
            if urllib.parse.urlsplit(new).netloc != urllib.parse.urlsplit(url).netloc:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = new
            continue
        if code == 416:
            raise StaleRange()
        if code in (401, 403) and gated_hint:
            raise FetchError(gated_hint)
        raise FetchError(f"{name}: server answered {code} for {redact(url)}")
    raise FetchError(f"{name}: too many redirects from {redact(url)}")


class Progress:
    """Prints one progress line per active file every few seconds (stderr)."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.lock = threading.Lock()
        self.active: dict[str, list[Any]] = {}
        # --progress-file: every file's bytes/total/rate as JSON, rewritten each second.
        self.file: str | None = None
        self.files: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, key: str, total: int | None, done: int) -> None:
        with self.lock:
            self.active[key] = [done, total, time.monotonic(), done]

    def add(self, key: str, n: int) -> None:
        with self.lock:
            entry = self.active.get(key)
            if entry is not None:
                entry[0] += n

    def finish(self, key: str) -> None:
        with self.lock:
            entry = self.active.pop(key, None)
        if entry:
            secs = max(time.monotonic() - entry[2], 1e-6)
            mb = (entry[0] - entry[3]) / 1e6
            log(f"progress: {key} done {entry[0] / 1e6:.1f} MB ({mb / secs:.1f} MB/s)")
            with self.lock:
                self.files[key] = {
                    "bytes": entry[0],
                    "total": entry[1],
                    "rate": mb * 1e6 / secs,
                    "done": True,
                }
            self.write_file()

    def write_file(self) -> None:
        if not self.file:
            return
        now = time.monotonic()
        with self.lock:
            for key, (done, total, started, first) in self.active.items():
                rate = (done - first) / max(now - started, 1e-6)
                self.files[key] = {"bytes": done, "total": total, "rate": rate, "done": False}
            data = json.dumps(self.files)
        try:
            with open(self.file + ".tmp", "w") as f:
                f.write(data)
            os.replace(self.file + ".tmp", self.file)
        except OSError:
            pass  # progress is a courtesy: a full disk must not fail the download

    def _run(self) -> None:
        if self.file:
            ticks = 0
            step = max(1, round(self.interval))
            while not self.stop.wait(1.0):
                self.write_file()
                ticks += 1
                if ticks % step == 0:
                    self._log_active()
            return
        while not self.stop.wait(self.interval):
            self._log_active()

    def _log_active(self) -> None:
        with self.lock:
            rows = [(k, *v) for k, v in self.active.items()]
        for key, done, total, started, first in rows:
            rate = (done - first) / 1e6 / max(time.monotonic() - started, 1e-6)
            pct = f"{100 * done / total:.0f}%" if total else f"{done / 1e6:.1f} MB"
            log(f"progress: {key} {pct} {rate:.1f} MB/s")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_writeback(fd: int, start: int, end: int) -> None:
    """Ask the kernel to start writing bytes [start, end) of fd to the disk now, without waiting.

    ``POSIX_FADV_DONTNEED`` starts writeback of the dirty pages in the range (and drops
    the ones already clean, so a large download does not crowd the page cache); the
    fsync before the rename then only waits for what is still in flight. A no-op on
    tmpfs and wherever the call is missing.
    """
    if end > start and _FADVISE is not None:
        try:
            os.posix_fadvise(fd, start, end - start, _FADVISE)
        except OSError:
            pass  # only a hint: the fsync before the rename still writes everything


_FADVISE: int | None = getattr(os, "POSIX_FADV_DONTNEED", None)


class _Sink:
    """Writes the download at increasing offsets: through the page cache, writeback started early.

    Every _WRITEBACK_STEP bytes the written stretch is handed to the disk
    (:func:`start_writeback`) while the next bytes arrive, so the fsync before the rename
    finds little left to do. Measured on this project's ext4 virtio disk (256 MiB, 1 MiB
    writes, fsync at the end): page cache 776-917 MB/s, page cache with early writeback
    1057-1087 MB/s, O_DIRECT 350-420 MB/s (each direct write into a new file waits for its
    extent allocation; delayed allocation writes large extents). ``COMFYFLEET_FETCH_DIRECT=1``
    still selects O_DIRECT (whole aligned blocks; the rest, and everything after a refusal,
    through the page cache) for disks where it wins. Both paths end with the same fsync.
    """

    def __init__(self, fd: int, path: str, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.direct = _open_direct(path)
        self._flushed = offset  # writeback started for everything before this offset

    def write(self, view: memoryview) -> None:
        """Write all of view at the current offset (whole blocks direct if asked, the rest buffered)."""
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
            pos += os.pwrite(self.fd, view[pos:], at)
        self.offset += n
        if self.offset - self._flushed >= _WRITEBACK_STEP:
            start_writeback(self.fd, self._flushed, self.offset)
            self._flushed = self.offset

    def close(self) -> None:
        """Close the O_DIRECT descriptor (not fd: the caller's, which it fsyncs)."""
        if self.direct is not None:
            os.close(self.direct)
            self.direct = None


def _open_direct(path: str) -> int | None:
    """A second descriptor on path with O_DIRECT when COMFYFLEET_FETCH_DIRECT=1 asks for it, else None."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or os.environ.get("COMFYFLEET_FETCH_DIRECT") != "1":
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
        import queue

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
    import http.client
    import mmap
    import queue

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
                try:
                    r = src.readinto(view[n:want])
                except (OSError, http.client.HTTPException) as exc:
                    free.put(buf)
                    raise _Cut(type(exc).__name__) from None
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


# ---------------------------------------------------------------------------
# ranged parallel transfer


class _Abort(Exception):
    """Another part of the same download failed: stop quietly."""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _save_json(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _range_total(resp: Any) -> int | None:
    """The full length from a ``Content-Range: bytes a-b/total`` answer, else None."""
    m = re.match(r"^bytes (\d+)-(\d+)/(\d+)$", (resp.headers.get("Content-Range") or "").strip())
    return int(m.group(3)) if m else None


def _segments(total: int, segment: int) -> int:
    return max(1, -(-total // segment))


def _connect(url: str, timeout: float = 60) -> http.client.HTTPConnection:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)


class HostSlots:
    """At most ``limit`` connections to one host at a time, over every file of the run."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    def _sem(self, url: str) -> threading.BoundedSemaphore:
        import urllib.parse

        netloc = urllib.parse.urlsplit(url).netloc
        with self._lock:
            return self._sems.setdefault(netloc, threading.BoundedSemaphore(self.limit))

    def acquire(self, url: str, wanted: Any) -> bool:
        """Wait for a slot while ``wanted()`` says there is still work; True when one was taken."""
        sem = self._sem(url)
        while wanted():
            if sem.acquire(timeout=0.2):
                return True
        return False

    def release(self, url: str) -> None:
        self._sem(url).release()

    def hold(self, url: str) -> _Held:
        """``with slots.hold(url):`` one slot for the block."""
        return _Held(self, url)


class _Held:
    def __init__(self, slots: HostSlots, url: str) -> None:
        self.slots, self.url = slots, url

    def __enter__(self) -> None:
        self.slots.acquire(self.url, lambda: True)

    def __exit__(self, *exc: object) -> None:
        self.slots.release(self.url)


class _RangedJob:
    """One file fetched as fixed-size segments over several connections.

    Workers take the lowest segment not yet taken, so the file fills roughly in order; each
    segment lands in its own page-aligned buffer, is written at its offset (its writeback
    started at once; O_DIRECT when asked) and handed to the hashing loop, which hashes segments strictly
    in order. Buffers are few (two per connection), so a slow segment holds the others back
    instead of growing memory. ``written`` is what a resumed run may keep.
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        fd: int,
        path: str,
        total: int,
        segment: int,
        done: set[int],
        slots: HostSlots,
        workers: int,
        on_bytes: Any,
    ) -> None:
        import mmap
        import queue
        import urllib.parse

        self.url = url
        parts = urllib.parse.urlsplit(url)
        self.target = request_target(parts)
        self.headers = {**headers, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        self.fd, self.total, self.segment = fd, total, segment
        self.before = set(done)
        self.written = set(done)
        self.todo = [i for i in range(_segments(total, segment)) if i not in done]
        self.taken = 0
        self.slots, self.workers, self.on_bytes = slots, max(1, workers), on_bytes
        self.ready: dict[int, tuple[Any, int]] = {}
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.stopping = False
        self.fetched = 0
        self.free: queue.Queue[Any] = queue.Queue()
        for _ in range(max(4, 2 * self.workers)):
            self.free.put(mmap.mmap(-1, segment))
        self.direct = _open_direct(path)
        self.threads: list[threading.Thread] = []

    def start(self, workers: int | None = None) -> None:
        """Start the fetching threads (``workers`` of them, default all the job may use)."""
        for _ in range(min(self.workers if workers is None else workers, len(self.todo))):
            self.add_worker()

    def add_worker(self) -> None:
        if len(self.threads) < len(self.todo):
            t = threading.Thread(target=self._worker, daemon=True)
            self.threads.append(t)
            t.start()

    def stop(self) -> None:
        """Stop the workers (after a failure elsewhere) and close the O_DIRECT descriptor."""
        with self.cond:
            self.stopping = True
            self.error = self.error or _Abort()
            self.cond.notify_all()
        for t in self.threads:
            t.join()
        if self.direct is not None:
            os.close(self.direct)
            self.direct = None

    def run(self, checkpoint: Any, h: Any = None, first: int = 0) -> str:
        """Hash the segments in order while the workers fetch them; ``checkpoint()`` after each one.

        ``h`` already holding the hash of the segments before ``first`` (fetched by a stream
        of the caller's) continues from there.
        """
        import hashlib

        if not self.threads:
            self.start()
        h = h or hashlib.sha256()
        try:
            for i in range(first, _segments(self.total, self.segment)):
                if i in self.before:
                    self._hash_from_disk(h, i)
                    continue
                with self.cond:
                    while i not in self.ready and self.error is None:
                        self.cond.wait()
                    if i not in self.ready:
                        raise self.error  # type: ignore[misc]
                    buf, n = self.ready.pop(i)
                h.update(memoryview(buf)[:n])
                self.free.put(buf)
                checkpoint()
        finally:
            self.stop()
        return h.hexdigest()

    def _hash_from_disk(self, h: Any, i: int) -> None:
        start, end = i * self.segment, min(self.total, (i + 1) * self.segment)
        while start < end:
            block = os.pread(self.fd, min(CHUNK, end - start), start)
            if not block:
                raise StaleRange()
            h.update(block)
            start += len(block)

    def _wanted(self) -> bool:
        with self.cond:
            return not self.stopping and self.taken < len(self.todo)

    def _take(self) -> int | None:
        with self.cond:
            if self.stopping or self.taken >= len(self.todo):
                return None
            self.taken += 1
            return self.todo[self.taken - 1]

    def _worker(self) -> None:
        import queue

        if not self.slots.acquire(self.url, self._wanted):
            return
        conn: http.client.HTTPConnection | None = None
        try:
            while True:
                try:
                    buf = self.free.get(timeout=0.2)
                except queue.Empty:
                    if not self._wanted():
                        return
                    continue
                idx = self._take()
                if idx is None:
                    self.free.put(buf)
                    return
                conn, n = self._fetch(conn, idx, buf)
                self._write(buf, idx * self.segment, n)
                with self.cond:
                    self.ready[idx] = (buf, n)
                    self.written.add(idx)
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the hashing loop, which raises it
            with self.cond:
                if self.error is None:
                    self.error = exc
                self.stopping = True
                self.cond.notify_all()
        finally:
            if conn is not None:
                conn.close()
            self.slots.release(self.url)

    def _fetch(self, conn: http.client.HTTPConnection | None, idx: int, buf: Any) -> tuple[Any, int]:
        import http.client

        start = idx * self.segment
        length = min(self.segment, self.total - start)
        view = memoryview(buf)
        last = ""
        for _attempt in range(_ATTEMPTS):
            if self.stopping:
                raise _Abort()
            try:
                if conn is None:
                    conn = _connect(self.url)
                conn.request(
                    "GET",
                    self.target,
                    headers={**self.headers, "Range": f"bytes={start}-{start + length - 1}"},
                )
                resp = conn.getresponse()
                if (
                    resp.status != 206
                    or resp.headers.get("Content-Range") != f"bytes {start}-{start + length - 1}/{self.total}"
                ):
                    conn.close()
                    raise FetchError(
                        f"server answered {resp.status} ({resp.headers.get('Content-Range')}) to a range "
                        f"request for bytes {start}-{start + length - 1} of {redact(self.url)}"
                    )
                n = 0
                while n < length:
                    r = resp.readinto(view[n:length])
                    if not r:
                        break
                    n += r
                    self.on_bytes(r)
                    with self.cond:
                        self.fetched += r
                if n < length:
                    raise _Cut(f"bytes {start}-{start + length - 1}: connection closed after {n} of {length}")
                if resp.will_close or resp.headers.get("Content-Length") != str(length):
                    conn.close()
                    conn = None
                return conn, n
            except (OSError, http.client.HTTPException, _Cut) as exc:
                last = str(exc) or type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
        raise _Cut(f"bytes {start}-{start + length - 1} kept breaking ({last})")

    def _write(self, buf: Any, at: int, n: int) -> None:
        view = memoryview(buf)[:n]
        fd = self.direct if self.direct is not None and n % _ALIGN == 0 and at % _ALIGN == 0 else self.fd
        pos = 0
        while pos < n:
            try:
                pos += os.pwrite(fd, view[pos:], at + pos)
            except OSError as exc:
                if fd == self.fd or exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                fd = self.fd  # accepted at open, refused at write: this segment goes through the page cache
        if fd == self.fd:
            start_writeback(fd, at, at + n)


class _Ranged:
    """A ranged download under way: ``finish`` hashes it to the end, ``abort`` stops it, keeping its segments."""

    def __init__(
        self,
        fetcher: Fetcher,
        job: _RangedJob,
        out: Any,
        meta_path: str,
        state: dict[str, Any],
        key: str,
        result: dict[str, Any],
    ) -> None:
        self.fetcher, self.job, self.out, self.meta_path = fetcher, job, out, meta_path
        self.state, self.key, self.result = state, key, result

    def _save(self) -> None:
        self.state["done"] = sorted(self.job.written)
        _save_json(self.meta_path, self.state)

    def finish(self, h: Any = None, first: int = 0) -> str:
        """Hash from segment ``first`` (``h`` holding everything before it) once the workers bring it."""
        job = self.job
        if first:
            with job.cond:
                job.written.add(first - 1)  # the caller's stream finished its segment
            job.add_worker()
        try:
            digest = job.run(
                lambda: _save_json(self.meta_path, {**self.state, "done": sorted(job.written)}), h, first
            )
            os.fsync(self.out.fileno())
        finally:
            self._save()
            self.result["bytes_fetched"] = self.result.get("bytes_fetched", 0) + job.fetched
            self.out.close()
        self.fetcher.progress.finish(self.key)
        return digest

    def abort(self) -> None:
        try:
            self.job.stop()
        finally:
            self._save()
            self.result["bytes_fetched"] = self.result.get("bytes_fetched", 0) + self.job.fetched
            self.out.close()


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
        self.connections = max(1, int(plan.get("connections_per_file") or CONNECTIONS))
        self.parallel_min = int(plan.get("parallel_min_bytes") or PARALLEL_MIN)
        self.segment = max(_ALIGN, int(plan.get("segment_bytes") or SEGMENT) // _ALIGN * _ALIGN)
        self.slots = HostSlots(int(plan.get("connections_per_host") or HOST_CONNECTIONS))
        self.split_below = float(plan.get("split_below_mbps") or SPLIT_BELOW_MBPS) * 1e6

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
        result: dict[str, Any] = {
            "filename": name,
            "folder": item["folder"],
            "bytes_fetched": 0,
            "bytes_reused": 0,
        }
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

    def _transfer(
        self, src: Source, part: str, want: str | None, item: dict[str, Any], result: dict[str, Any]
    ) -> str:
        """Bytes into part (resuming what an earlier run left), returning their sha256.

        A file counts as complete only when its length is proven: the Content-Range /
        Content-Length total, else the size the source's metadata or the lock gives, else
        the server answering 416 to a Range request just past the last byte received.
        A cut connection (a close before the end, a broken chunked body) resumes from
        where it stopped, a few times, then fails with the part kept for the next run.
        """
        name = item["filename"]
        meta_path = part + ".json"
        identity = {"url": redact(src.url), "sha256": want}
        state: dict[str, Any] = {}
        if os.path.exists(part):
            try:
                with open(meta_path) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                state = {}
            # A .part from another source or another expected hash is not ours to resume.
            if state.get("url") != identity["url"] or state.get("sha256") != want:
                state = {}
        if not state:
            _unlink(part)
        state.update(identity)
        _save_json(meta_path, state)
        expected = src.size if src.size is not None else item.get("size")
        cut: str = ""
        for _attempt in range(_ATTEMPTS):
            try:
                return self._attempt(src, part, state, expected, item, result)
            except StaleRange:
                state = dict(identity)
                _unlink(part)
                _save_json(meta_path, state)
            except _Cut as exc:
                cut = str(exc)
        raise FetchError(
            f"{name}: {cut or 'the server keeps refusing the download range'}; run again to resume"
        )

    def _attempt(
        self,
        src: Source,
        part: str,
        state: dict[str, Any],
        expected: int | None,
        item: dict[str, Any],
        result: dict[str, Any],
    ) -> str:
        """One try: resume a segmented .part, or stream; a large file's first stretch decides whether to split.

        The first segment comes over one connection with the copy pipeline. Fast (a
        local link), the rest follows on that path: extra Python threads would only cost CPU.
        Slower than ``split_below_mbps`` (a CDN paced per connection), the rest is fetched as
        segments over several connections.
        """
        name = item["filename"]
        ranged = "segment" in state
        have = 0 if ranged else (os.path.getsize(part) if os.path.exists(part) else 0)
        headers = dict(src.headers)
        small = expected is not None and expected - have < self.parallel_min
        stretch_end = (have // self.segment + 1) * self.segment
        if ranged:
            headers["Range"] = (
                f"bytes={have}-{have}"  # one byte: does the server still serve ranges, and the length
            )
        elif self.connections > 1 and not small:
            headers["Range"] = f"bytes={have}-{stretch_end - 1}"
        elif have:
            headers["Range"] = f"bytes={have}-"
        resp, url, headers = open_following(src.url, headers, name, src.denied_hint)
        with resp:
            total = _range_total(resp)
            if resp.status == 206 and total is not None and expected is not None and total != expected:
                raise FetchError(
                    f"{name}: server says {total} bytes, the source's metadata or the lock says {expected}"
                )
            if ranged:
                if resp.status != 206 or total is None:
                    raise StaleRange()  # the server stopped serving ranges: the segments on disk cannot be completed
                return self._ranged(url, headers, part, state, total, item, result)
            bounded = headers.get("Range", "").endswith(f"-{stretch_end - 1}")
            if not (bounded and resp.status == 206 and total is not None and total > stretch_end):
                return self._stream(resp, part, have, expected, item, result, url, headers)
            t0 = time.monotonic()
            split: list[_Ranged] = []

            def watch(got: int) -> None:
                # Paced below split_below after the first buffers: the other segments start
                # now, over more connections, while this one finishes its stretch.
                elapsed = time.monotonic() - t0
                if split or elapsed < _PROBE_SECONDS:
                    return
                if got / elapsed < self.split_below:
                    split.append(
                        self._ranged_begin(
                            url, headers, part, state, total, item, result, have // self.segment
                        )
                    )

            try:
                h = self._stream_hash(
                    resp, part, have, total, item, result, url, headers, upto=stretch_end, watch=watch
                )
            except BaseException:
                for job in split:
                    job.abort()
                raise
            rate = (stretch_end - have) / max(time.monotonic() - t0, 1e-6)
        if split:
            return split[0].finish(h, stretch_end // self.segment)
        if rate < self.split_below:
            return self._ranged(url, headers, part, state, total, item, result)
        headers["Range"] = f"bytes={stretch_end}-"
        reused = result["bytes_reused"]  # what an earlier run left, not the stretch just fetched
        resp, url, headers = open_following(url, headers, name, src.denied_hint)
        with resp:
            if resp.status != 206:
                raise StaleRange()
            digest = self._stream_hash(
                resp, part, stretch_end, total, item, result, url, headers, h=h
            ).hexdigest()
        result["bytes_reused"] = reused
        return digest

    def _stream(
        self,
        resp: Any,
        part: str,
        have: int,
        expected: int | None,
        item: dict[str, Any],
        result: dict[str, Any],
        url: str,
        headers: dict[str, str],
    ) -> str:
        return self._stream_hash(resp, part, have, expected, item, result, url, headers).hexdigest()

    def _stream_hash(
        self,
        resp: Any,
        part: str,
        have: int,
        expected: int | None,
        item: dict[str, Any],
        result: dict[str, Any],
        url: str,
        headers: dict[str, str],
        upto: int | None = None,
        watch: Any = None,
        h: Any = None,
    ) -> Any:
        """One connection from have to the end (or to ``upto``); raises _Cut when the body ends early.

        Returns the sha256 object over the file so far. ``watch(n)`` is called on the
        receiving thread with the bytes fetched so far, after each buffer. ``h``: the sha256
        of the ``have`` bytes before, when the caller has it (else they are read back and hashed).
        """
        import hashlib

        name = item["filename"]
        status = resp.status
        if status == 200:
            have, h = 0, None  # the server sent the whole file: start over
        elif status != 206:
            raise FetchError(f"{name}: server answered {status} for {redact(url)}")
        if h is None:
            h = hashlib.sha256()
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
        total = (
            _range_total(resp) or (have + int(length) if length and length.isdigit() else None) or expected
        )
        if expected is not None and total != expected:
            raise FetchError(
                f"{name}: server says {total} bytes, the source's metadata or the lock says {expected}"
            )
        key = f"{item['folder']}/{item['filename']}"
        self.progress.start(key, total, have)
        result["bytes_reused"] = have
        got = 0
        seen = [0]

        def on_bytes(n: int) -> None:
            self.progress.add(key, n)
            if watch is not None:
                seen[0] += n
                watch(seen[0])

        with self.slots.hold(url):
            with open(part, "r+b" if have else "wb") as out:
                out.truncate(have)
                sink = _Sink(out.fileno(), part, have)
                try:
                    got = _copy_hashing(resp, sink, h, on_bytes)
                except _Cut as exc:
                    # Whole buffers already written stay on disk: the next attempt resumes after them.
                    raise _Cut(f"connection broke after {sink.offset} bytes ({exc})") from None
                finally:
                    sink.close()
                    os.fsync(out.fileno())
        if upto is None:  # with upto, a first stretch: more of the file follows
            self.progress.finish(key)
        result["bytes_fetched"] = result.get("bytes_fetched", 0) + got
        end = have + got
        if upto is not None and end != upto:
            raise _Cut(f"connection closed after {end} of {upto} bytes")
        if upto is None and total is not None and end != total:
            raise _Cut(f"connection closed after {end} of {total} bytes")
        if total is None and not self._confirm_end(url, headers, end, name):
            raise _Cut(f"connection closed after {end} bytes and the server sent no length")
        return h

    def _confirm_end(self, url: str, headers: dict[str, str], end: int, name: str) -> bool:
        """For a body without any length: the file ends at end only if a Range from there gets 416."""
        try:
            resp, _url, _h = open_following(url, {**headers, "Range": f"bytes={end}-"}, name, None)
        except StaleRange:
            return True
        with resp:
            if resp.status == 206:
                return False
        raise FetchError(
            f"{name}: the server sent no length and serves no ranges, so a complete download cannot be "
            "told from a cut one: add size: or sha256: for it in workflows/overrides.yaml"
        )

    def _ranged(
        self,
        url: str,
        headers: dict[str, str],
        part: str,
        state: dict[str, Any],
        total: int,
        item: dict[str, Any],
        result: dict[str, Any],
    ) -> str:
        """Several connections, one segment each at a time, hashed in order as they arrive."""
        return self._ranged_begin(url, headers, part, state, total, item, result).finish()

    def _ranged_begin(
        self,
        url: str,
        headers: dict[str, str],
        part: str,
        state: dict[str, Any],
        total: int,
        item: dict[str, Any],
        result: dict[str, Any],
        owned: int | None = None,
    ) -> _Ranged:
        """Open the .part at its full length and start the segment workers.

        ``owned``: the caller's own stream is still fetching that segment of a single-stream
        .part (the segments before it are whole on disk): workers start after it, with one
        connection fewer until the caller hands its hash to ``finish``.
        """
        meta_path = part + ".json"
        segment = int(state.get("segment") or self.segment)
        if "segment" in state and state.get("total") == total:
            done = {int(i) for i in state.get("done", [])}
        elif "segment" in state:
            # Segments of a file that has since changed length upstream: nothing of it is kept.
            _unlink(part)
            done = set()
        else:
            # A single-stream .part: its whole segments are kept.
            have = os.path.getsize(part) if os.path.exists(part) else 0
            segment = self.segment
            done = set(range(owned if owned is not None else min(have, total) // segment))
        state.update(total=total, segment=segment, done=sorted(done))
        _save_json(meta_path, state)
        key = f"{item['folder']}/{item['filename']}"
        reused = sum(min(segment, total - i * segment) for i in done)
        if owned is None:  # else the caller's stream has counted what it resumed from
            result["bytes_reused"] = reused
            self.progress.start(key, total, reused)
        out = open(part, "r+b" if os.path.exists(part) else "w+b")  # noqa: SIM115 - closed by finish()
        try:
            out.truncate(total)
            workers = min(self.connections, _segments(total, segment))
            job = _RangedJob(
                url,
                {k: v for k, v in headers.items() if k.lower() != "range"},
                out.fileno(),
                part,
                total,
                segment,
                done | ({owned} if owned is not None else set()),
                self.slots,
                workers,
                lambda n: self.progress.add(key, n),
            )
            job.written.discard(owned)  # type: ignore[arg-type]
            job.start(workers - 1 if owned is not None else None)
        except BaseException:
            out.close()
            raise
        return _Ranged(self, job, out, meta_path, state, key, result)

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


def read_secrets(args: Any) -> dict[str, str]:
    if not args.secrets_stdin:
        return {}
    raw = sys.stdin.read()
    data = json.loads(raw) if raw.strip() else {}
    return {k: str(v) for k, v in data.items() if k in ("HF_TOKEN", "CIVITAI_API_TOKEN") and v}


_FLAGS = {"--secrets-stdin": "secrets_stdin", "--check": "check"}
_VALUES = {"--plan": "plan", "--parallel": "parallel", "--progress-file": "progress_file"}


class Args:
    """The parsed command line (the attributes argparse would give)."""

    def __init__(self) -> None:
        self.plan: str | None = None
        self.secrets_stdin = False
        self.check = False
        self.parallel: int | None = None
        self.progress_file: str | None = None


def parse_args(argv: list[str]) -> Any:
    """The spellings comfyfleet uses (``--opt value``, ``--opt=value``, flags), by hand.

    Importing argparse costs every ``--check`` (run on every host on every deploy) more than
    the check itself; anything else (``--help``, a typo, an abbreviation, a bad number) goes
    to :func:`argparse_args`, which parses it as before or says what is wrong (exit 2).
    """
    args = Args()
    rest = iter(argv)
    for arg in rest:
        name, eq, value = arg.partition("=")
        if name in _FLAGS and not eq:
            setattr(args, _FLAGS[name], True)
            continue
        if name not in _VALUES:
            return argparse_args(argv)
        if not eq:
            value = next(rest, "-")
            if value.startswith("-"):
                return argparse_args(argv)
        if name == "--parallel":
            if not value.isdigit():
                return argparse_args(argv)
            args.parallel = int(value)
        else:
            setattr(args, _VALUES[name], value)
    if args.plan is None:
        return argparse_args(argv)
    return args


def argparse_args(argv: list[str]) -> Any:
    """The full command-line parser: help, abbreviations and error messages."""
    import argparse

    parser = argparse.ArgumentParser(description="Fetch model files of a comfyfleet plan.")
    parser.add_argument("--plan", required=True)
    parser.add_argument(
        "--secrets-stdin", action="store_true", help="read a JSON object of tokens from stdin"
    )
    parser.add_argument("--check", action="store_true", help="only report what is missing or wrong")
    parser.add_argument("--parallel", type=int, default=None)
    parser.add_argument(
        "--progress-file", help="write every file's bytes/total/rate here (JSON, each second)"
    )
    return parser.parse_args(argv)


def run_parallel(fn: Any, items: list[Any], workers: int) -> list[Any]:
    """[fn(item) for item in items], at most ``workers`` at a time, in threads.

    (concurrent.futures would cost every download ~9 ms of imports; one item runs here.)
    """
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    lock = threading.Lock()
    todo = iter(range(len(items)))

    def work() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None or errors:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # noqa: BLE001 - raised again on the calling thread
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(min(workers, len(items)) - 1)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
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
                rows.append(
                    {
                        "filename": item.get("filename"),
                        "folder": item.get("folder"),
                        "state": "unsafe",
                        "reason": str(exc),
                    }
                )
        fetcher.cache.save()
        print("CHECK " + json.dumps(rows), flush=True)
        return 0
    parallel = max(1, args.parallel or int(plan.get("parallel", 3)))
    fetcher.progress.file = args.progress_file
    fetcher.progress.thread.start()
    results = run_parallel(fetcher.fetch, items, parallel)
    fetcher.progress.stop.set()
    fetcher.progress.write_file()
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
