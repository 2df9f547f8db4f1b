"""Test videos of the kinds users have: lossless ones (the same pixels back), rotated ones (a
display matrix in the MP4 track header, as phones write) and variable-frame-rate ones (per-frame
durations in the MP4 sample table), made with OpenCV's writer and a small edit of the MP4 boxes."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

# boxes that hold other boxes, on the way from moov to the sample table
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0, fourcc: str = "mp4v") -> Path:
    """Write BGR frames with OpenCV; "FFV1" (in .avi / .mkv) is lossless."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


def _boxes(data: bytes, start: int, end: int):
    """(type, start, end) of the boxes in data[start:end]."""
    while start < end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        if size == 1:
            size = struct.unpack(">Q", data[start + 8:start + 16])[0]
        yield kind, start, start + size
        start += size


def _rewrite(data: bytes, start: int, end: int, edit, drop=()) -> bytes:
    """The boxes of data[start:end] with `edit(kind, payload) -> payload or None (unchanged)`
    applied to every leaf box below moov, and the boxes of a kind in `drop` left out; container
    sizes follow."""
    out = b""
    for kind, box_start, box_end in _boxes(data, start, end):
        header = 8
        if kind in drop:
            continue
        if kind in _CONTAINERS:
            payload = _rewrite(data, box_start + header, box_end, edit, drop)
        else:
            payload = data[box_start + header:box_end]
            changed = edit(kind, payload)
            payload = payload if changed is None else changed
        out += struct.pack(">I4s", len(payload) + header, kind) + payload
    return out


def _edit_moov(path: Path, edit, drop=()) -> None:
    data = path.read_bytes()
    top = list(_boxes(data, 0, len(data)))
    kinds = [kind for kind, _, _ in top]
    assert kinds.index(b"moov") > kinds.index(b"mdat"), "moov must follow mdat (chunk offsets stay valid)"
    _, start, end = top[kinds.index(b"moov")]
    path.write_bytes(data[:start] + _rewrite(data, start, end, edit, drop) + data[end:])


def set_rotation(path: Path, degrees: int) -> None:
    """Give an MP4's video track the display matrix of a rotation by `degrees` (90, 180, 270)
    clockwise, as phones record upright video turned sideways."""
    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    matrix = struct.pack(">9i", cos << 16, sin << 16, 0, -sin << 16, cos << 16, 0, 0, 0, 1 << 30)

    def edit(kind, payload):
        if kind != b"tkhd":
            return None
        offset = 4 + (32 if payload[0] == 1 else 20) + 8 + 8  # version/flags, times and ids, reserved, layer...
        return payload[:offset] + matrix + payload[offset + 36:]

    _edit_moov(path, edit)


def set_frame_durations(path: Path, durations: list[int]) -> None:
    """Give the frames of an MP4's video track these durations, in its media time scale (the
    sample table's stts), so its frame rate varies. The edit list, which would cut the track at
    its old duration, is dropped."""

    def edit(kind, payload):
        if kind != b"stts":
            return None
        count = sum(struct.unpack(">II", payload[8 + 8 * i:16 + 8 * i])[0]
                    for i in range(struct.unpack(">I", payload[4:8])[0]))
        assert count == len(durations), f"{count} frames, {len(durations)} durations"
        entries = b"".join(struct.pack(">II", 1, d) for d in durations)
        return payload[:4] + struct.pack(">I", len(durations)) + entries

    _edit_moov(path, edit, drop={b"edts"})


def media_time_scale(path: Path) -> int:
    """The video track's time scale (mdhd), the unit of set_frame_durations."""
    data = path.read_bytes()
    found = []

    def walk(start, end):
        for kind, box_start, box_end in _boxes(data, start, end):
            if kind in _CONTAINERS:
                walk(box_start + 8, box_end)
            elif kind == b"mdhd":
                payload = data[box_start + 8:box_end]
                found.append(struct.unpack(">I", payload[20:24] if payload[0] == 1 else payload[12:16])[0])

    walk(0, len(data))
    return found[0]
