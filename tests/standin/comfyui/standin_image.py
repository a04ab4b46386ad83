"""Images without numpy: an RGB pixel buffer, and real PNG files written with zlib + struct."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass


@dataclass
class Image:
    """One RGB image, 8 bits per channel, rows top to bottom (ComfyUI's IMAGE is a batch of these)."""

    width: int
    height: int
    rgb: bytes

    @classmethod
    def solid(cls, width: int, height: int, color: int) -> Image:
        px = bytes(((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF))
        return cls(width, height, px * (width * height))

    def resized(self, width: int, height: int) -> Image:
        """Nearest-neighbour resize."""
        out = bytearray(width * height * 3)
        for y in range(height):
            sy = min(self.height - 1, y * self.height // max(height, 1))
            row = self.rgb[sy * self.width * 3 : (sy + 1) * self.width * 3]
            for x in range(width):
                sx = min(self.width - 1, x * self.width // max(width, 1)) * 3
                o = (y * width + x) * 3
                out[o : o + 3] = row[sx : sx + 3]
        return Image(width, height, bytes(out))

    def inverted(self) -> Image:
        return Image(self.width, self.height, bytes(255 - b for b in self.rgb))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(img: Image, text: dict[str, str] | None = None, compress_level: int = 4) -> bytes:
    """A valid 8-bit RGB PNG, with optional tEXt chunks (ComfyUI stores prompt/workflow there)."""
    stride = img.width * 3
    raw = b"".join(b"\x00" + img.rgb[y * stride : (y + 1) * stride] for y in range(img.height))
    parts = [
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", struct.pack(">IIBBBBB", img.width, img.height, 8, 2, 0, 0, 0)),
    ]
    for key, value in (text or {}).items():
        parts.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace")))
    parts.append(_chunk(b"IDAT", zlib.compress(raw, compress_level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> Image:
    """Decode a non-interlaced 8-bit gray/RGB/RGBA PNG; other kinds become a gray image of the same size."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos = 8
    idat = b""
    width = height = depth = ctype = interlace = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or channels is None or interlace:
        return Image.solid(width, height, 0x808080)
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    rgb = bytearray()
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                line[i] = (line[i] + _paeth(a, b, c)) & 0xFF
        prev = line
        for x in range(width):
            px = line[x * channels : (x + 1) * channels]
            rgb += bytes((px[0], px[0], px[0])) if channels <= 2 else bytes(px[:3])
    return Image(width, height, bytes(rgb))
