"""Image inputs: a URL, base64 or a file name becomes a file in the caller's input folder.

URLs are fetched through the outbound policy (public addresses only), with a per-key
limit of downloads in flight and one deadline for the whole download, so a server that
drips one byte a second holds a caller's own slot for at most the deadline and never
another caller's. Errors say what to fix without echoing what the remote side answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from typing import Any

import httpx

from comfyui_api import outbound, tenancy
from comfyui_api.comfy import ComfyClient
from comfyui_api.jobs import guess_image_extension, safe_input_name
from comfyui_api.security import Caller
from comfyui_api.settings import Settings, parse_networks
from comfyui_api.workflows import Endpoint


class Rejected(Exception):
    """An image input that cannot be used: HTTP status and the detail to answer with."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


def _err(loc: list[str], kind: str, msg: str, status: int = 422) -> Rejected:
    return Rejected(status, [{"loc": loc, "type": kind, "msg": msg}])


def is_base64_image(value: str) -> bool:
    """Short base64 strings are told from file names by decoding to image bytes."""
    try:
        return guess_image_extension(base64.b64decode(value, validate=True)) is not None
    except (binascii.Error, ValueError):
        return False


class ImageInputs:
    def __init__(self, settings: Settings, comfy: ComfyClient, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.comfy = comfy
        self.client = client
        self.fetching: dict[str, int] = {}

    async def resolve(
        self, ep: Endpoint, values: dict[str, Any], given: set[str], who: Caller
    ) -> dict[str, Any]:
        """values with image parameters as ComfyUI input file names (uploads done); Rejected when not."""
        out = dict(values)
        for name, p in ep.params.items():
            v = values.get(name)
            if p.kind != "image" or not isinstance(v, str) or name not in given:
                continue
            loc = ["body", "input", name]
            data: bytes | None = None
            if v.startswith(("http://", "https://")):
                if not self.settings.allow_url_inputs:
                    raise _err(loc, "url", "image URLs are disabled on this service; send base64")
                data = await self.fetch(v, loc, who)
            elif v.startswith("data:") or len(v) > 255 or is_base64_image(v):
                b64 = v.split(",", 1)[1] if v.startswith("data:") else v
                try:
                    data = base64.b64decode(b64, validate=True)
                except (binascii.Error, ValueError):
                    raise _err(loc, "base64", f"{name} is not valid base64") from None
            elif not safe_input_name(v) or (tenancy.annotated(v) and not who.admin):
                raise _err(
                    loc,
                    "path",
                    f"{name} must be a file name inside your input folder "
                    "(folder annotations such as ' [output]' are not accepted)",
                )
            else:
                out[name] = tenancy.to_comfy(who, v)
            if data is not None:
                ext = guess_image_extension(data)
                if ext is None:
                    raise _err(loc, "image", f"{name} is not a PNG, JPEG, WebP or GIF image")
                fname = "api-" + hashlib.sha256(data).hexdigest()[:24] + ext
                info = await self.comfy.upload_image(
                    fname, data, "image/" + ext[1:], tenancy.input_folder(who)
                )
                sub = str(info.get("subfolder") or "")
                out[name] = (sub + "/" if sub else "") + str(info.get("name") or fname)
        return out

    async def fetch(self, url: str, loc: list[str], who: Caller) -> bytes:
        """The image at url within the deadline, through the outbound policy; Rejected when not."""
        why = await outbound.check_url(url, parse_networks(self.settings.allow_outbound))
        if why is not None:
            raise _err(loc, "url", f"{loc[-1]}: URL {why}")
        slot = who.key_id or who.address
        if self.fetching.get(slot, 0) >= self.settings.max_fetches_per_key:
            raise Rejected(
                429,
                f"{self.settings.max_fetches_per_key} image downloads already in flight for this "
                "key; retry when they finish",
            )
        self.fetching[slot] = self.fetching.get(slot, 0) + 1
        try:
            return await asyncio.wait_for(self._download(url, loc), self.settings.fetch_deadline_s)
        except asyncio.TimeoutError:
            raise _err(
                loc, "url", f"{loc[-1]}: the image did not arrive within {self.settings.fetch_deadline_s:g}s"
            ) from None
        except httpx.HTTPError as exc:
            msg = (
                "URL points at a non-public address; not allowed"
                if outbound.is_blocked(exc)
                else "the image could not be fetched from that URL"
            )
            raise _err(loc, "url", f"{loc[-1]}: {msg}") from None
        finally:
            left = self.fetching[slot] - 1
            if left:
                self.fetching[slot] = left
            else:
                del self.fetching[slot]

    async def _download(self, url: str, loc: list[str]) -> bytes:
        async with self.client.stream("GET", url) as r:
            if r.status_code != 200:
                raise _err(
                    loc,
                    "url",
                    f"{loc[-1]}: the image could not be fetched from that URL (it did not answer 200)",
                )
            chunks, size = [], 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > self.settings.max_input_image_bytes:
                    raise Rejected(
                        413, f"image at {loc[-1]} is over {self.settings.max_input_image_bytes} bytes"
                    )
                chunks.append(chunk)
            return b"".join(chunks)
