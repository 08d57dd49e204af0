"""PS3.18 10.4: WADO-RS retrieve: instances, metadata, frames, bulk data, rendered images, zip."""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
import zipfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pixel_array
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pacsnode.archive.query import InstanceRef
from pacsnode.data.part10 import dataset_offset, file_meta
from pacsnode.data.transcode import TranscodeError, is_encapsulated, transcode
from pacsnode.web import metadata, render
from pacsnode.web.auditing import audited_retrieve, note_sent
from pacsnode.web.context import WebContext, check_uid, log
from pacsnode.web.dicomjson import dumps
from pacsnode.web.media import (
    ANY_SYNTAX,
    DICOM,
    DICOM_JSON,
    FRAME_MEDIA_TYPES,
    MULTIPART,
    OCTET_STREAM,
    NotAcceptable,
    accept_list,
    accepts,
    choose_syntax,
)
from pacsnode.web.multipart import MultipartWriter, new_boundary

_CHUNK = 1 << 20
_BATCH = 4 << 20  # bytes of stored files read per thread hop
_wlog = logging.getLogger("pacsnode.web.wado")


def _multipart(parts: AsyncIterator[bytes], part_type: str, writer: MultipartWriter) -> StreamingResponse:
    return StreamingResponse(parts, media_type=writer.content_type(part_type))


async def _refs(ctx: WebContext, study: str, series: str | None, instance: str | None) -> list[InstanceRef]:
    check_uid(study)
    if series is not None:
        check_uid(series)
    if instance is not None:
        check_uid(instance)
    refs = await ctx.run(ctx.find_instances, study, series, instance)
    if not refs:
        raise HTTPException(404, "no such study, series or instance")
    return refs


# ---------------------------------------------------------------- instances


def _read_part10(path: Path, ref: InstanceRef, syntax: str) -> bytes:
    """A stored file, whole, in ``syntax`` (converted when it differs from the stored one)."""
    data = path.read_bytes()
    if syntax == ref.transfer_syntax_uid:
        return data
    body = transcode(data[dataset_offset(data, path) :], ref.transfer_syntax_uid, syntax)
    return file_meta(ref.sop_class_uid, ref.sop_instance_uid, syntax, "") + body


def _read_chunk(path: Path, offset: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(_CHUNK)


@audited_retrieve  # PS3.15 A.5.3.7
async def retrieve_instances(
    ctx: WebContext, request: Request, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    """Study, series or instance as multipart/related; type="application/dicom" (PS3.18 10.4.1.1)."""
    accept = accept_list(request.headers.get("accept"))
    zip_wanted = accepts(accept, "application/zip") == "application/zip"
    if series is None and instance is None and zip_wanted and all(a.media_type != MULTIPART for a in accept):
        return await _zip(ctx, study)
    refs = await _refs(ctx, study, series, instance)
    note_sent(refs)
    try:
        syntaxes = [choose_syntax(accept, DICOM, ref.transfer_syntax_uid) for ref in refs]
    except NotAcceptable as exc:
        raise HTTPException(406, str(exc)) from None
    writer = MultipartWriter(new_boundary())
    if all(s == r.transfer_syntax_uid for r, s in zip(refs, syntaxes, strict=True)):
        return await _as_stored(ctx, refs, writer)

    async def parts() -> AsyncIterator[bytes]:
        sent = 0
        for ref, syntax in zip(refs, syntaxes, strict=True):
            path = ctx.archive.store.absolute(ref.path)
            head = writer.head(f"{DICOM}; transfer-syntax={syntax}")
            if syntax == ref.transfer_syntax_uid and ref.size > _CHUNK:
                yield head
                offset = 0
                while chunk := await ctx.run(_read_chunk, path, offset):
                    offset += len(chunk)
                    yield chunk
                sent += 1
                continue
            try:
                data = await ctx.run(_read_part10, path, ref, syntax)
            except (OSError, ValueError, TranscodeError) as exc:
                _wlog.warning("WADO-RS: instance %s left out: %s", ref.sop_instance_uid, exc)
                continue
            sent += 1
            yield head + data
        yield writer.close()
        _wlog.info("WADO-RS: sent %d of %d instance(s)", sent, len(refs))

    return _multipart(parts(), DICOM, writer)


class _StoredParts:
    """A multipart answer of stored files, read in batches into one buffer with the part heads.

    The sizes are known before the first byte goes, so the answer has a Content-Length (no
    chunked framing, no copy per part), and each batch costs one thread hop, not one per file.
    """

    def __init__(self, items: list[tuple[bytes, Path, int]], close: bytes) -> None:
        self.items = items
        self.close = close
        self.length = sum(len(head) + size for head, _, size in items) + len(close)
        # A batch always holds a whole part head and the close delimiter.
        self._size = max(_BATCH, len(close), *(len(head) for head, _, _ in items))
        self._index = 0
        self._offset = -1  # -1: the head of the current item is not written yet
        self._closed = False

    def read(self) -> memoryview | None:
        """The next batch of the answer (blocking); None at the end."""
        if self._closed:
            return None
        buf = bytearray(self._size)
        view = memoryview(buf)
        filled = 0
        while filled < self._size and self._index < len(self.items):
            head, path, size = self.items[self._index]
            if self._offset < 0:
                if filled + len(head) > self._size and filled:
                    break
                view[filled : filled + len(head)] = head
                filled += len(head)
                self._offset = 0
            want = min(size - self._offset, self._size - filled)
            if want > 0:
                with path.open("rb") as fh:
                    fh.seek(self._offset)
                    got = fh.readinto(view[filled : filled + want])
                if got != want:  # the file changed under us: the length already sent would lie
                    raise OSError(f"{path.name} changed size while it was sent")
                filled += want
                self._offset += want
            if self._offset >= size:
                self._index += 1
                self._offset = -1
        if self._index >= len(self.items) and filled + len(self.close) <= self._size:
            view[filled : filled + len(self.close)] = self.close
            filled += len(self.close)
            self._closed = True
        return view[:filled] if filled else None


def _plan_stored(ctx: WebContext, refs: Sequence[InstanceRef], writer: MultipartWriter) -> _StoredParts:
    items = []
    for ref in refs:
        path = ctx.archive.store.absolute(ref.path)
        items.append(
            (writer.head(f"{DICOM}; transfer-syntax={ref.transfer_syntax_uid}"), path, path.stat().st_size)
        )
    return _StoredParts(items, writer.close())


async def _as_stored(ctx: WebContext, refs: Sequence[InstanceRef], writer: MultipartWriter) -> Response:
    """Every instance as stored: files streamed in batches, the next read while one is sent."""
    try:
        stored = await ctx.run(_plan_stored, ctx, refs, writer)
    except OSError as exc:  # deleted since it was found
        raise HTTPException(404, f"an instance is gone: {exc.strerror}") from None

    async def body() -> AsyncIterator[memoryview]:
        pending = asyncio.ensure_future(ctx.run(stored.read))
        try:
            while (batch := await pending) is not None:
                pending = asyncio.ensure_future(ctx.run(stored.read))  # read ahead while this goes
                yield batch
        finally:
            if not pending.done():
                pending.cancel()
            elif not pending.cancelled():
                pending.exception()  # a client that left: the read-ahead's result is not wanted
        _wlog.info("WADO-RS: sent %d instance(s) as stored", len(refs))

    response = StreamingResponse(body(), media_type=writer.content_type(DICOM))
    response.headers["Content-Length"] = str(stored.length)
    return response


def _zip_file(ctx: WebContext, refs: Sequence[InstanceRef]) -> Any:
    spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 (closed by the streamer)
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for ref in refs:
            zf.write(ctx.archive.store.absolute(ref.path), f"{ref.sop_instance_uid}.dcm")
    spool.seek(0)
    return spool


async def _zip(ctx: WebContext, study: str) -> Response:
    """A study as application/zip of its Part 10 files (PS3.18 8.7.5 ZIP)."""
    refs = await _refs(ctx, study, None, None)
    note_sent(refs)
    spool = await ctx.run(_zip_file, ctx, refs)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await ctx.run(spool.read, _CHUNK):
                yield chunk
        finally:
            spool.close()

    headers = {"Content-Disposition": f'attachment; filename="{study}.zip"'}
    return StreamingResponse(chunks(), media_type="application/zip", headers=headers)


# ---------------------------------------------------------------- metadata


def _instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"


def _bulk_url(url: str, path: str) -> str:
    return f"{url}/bulkdata/{path}"


def _instance_metadata(path: Path, ref: InstanceRef, base: str) -> dict[str, Any]:
    """One instance's DICOM JSON, large binary values (Pixel Data among them) by reference."""
    url = _instance_url(base, ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)
    obj = metadata.instance_metadata(path, functools.partial(_bulk_url, url))
    # PS3.18 10.4.1.2: the transfer syntax the instance is available in.
    obj["00083002"] = {"vr": "UI", "Value": [ref.transfer_syntax_uid]}
    return dict(sorted(obj.items()))


def _metadata(ctx: WebContext, refs: Sequence[InstanceRef], base: str) -> bytes:
    out: list[dict[str, Any]] = []
    for ref in refs:
        try:
            out.append(_instance_metadata(ctx.archive.store.absolute(ref.path), ref, base))
        except Exception as exc:
            log.warning("metadata: cannot read %s: %s", ref.path, exc)
    return dumps(out)


@audited_retrieve  # PS3.15 A.5.3.7
async def retrieve_metadata(
    ctx: WebContext, request: Request, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    """Metadata of a study, series or instance as DICOM JSON with BulkDataURIs (PS3.18 10.4.1.2)."""
    accept = accept_list(request.headers.get("accept"))
    if accepts(accept, DICOM_JSON, "application/json") is None:
        raise HTTPException(406, "metadata is served as application/dicom+json")
    refs = await _refs(ctx, study, series, instance)
    note_sent(refs)
    body = await ctx.run(_metadata, ctx, refs, ctx.base_url(request))
    return Response(body, media_type=DICOM_JSON)


# ---------------------------------------------------------------- frames and bulk data


def frame_numbers(text: str) -> list[int]:
    """A frame list of the path ("1,3,5"), 1-based (PS3.18 8.3.3.1)."""
    try:
        numbers = [int(p) for p in text.split(",")]
    except ValueError:
        raise HTTPException(400, f"not a frame list: {text[:40]!r}") from None
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > 10_000:
        raise HTTPException(400, "frame numbers start at 1")
    return numbers


def _frames(path: Path, ref: InstanceRef, numbers: list[int], compressed: bool) -> list[bytes]:
    ds = dcmread(path, force=True)
    if "PixelData" not in ds:
        raise HTTPException(404, "the instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if max(numbers) > count:
        raise HTTPException(404, f"the instance has {count} frame(s)")
    out: list[bytes] = []
    if compressed:
        for n in numbers:
            out.append(get_frame(ds.PixelData, n - 1, number_of_frames=count))
        return out
    if not is_encapsulated(ref.transfer_syntax_uid) and ref.transfer_syntax_uid != "1.2.840.10008.1.2.2":
        bits = int(ds.BitsAllocated)
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        data: bytes = ds.PixelData
        if bits >= 8:
            return [data[(n - 1) * size : n * size] for n in numbers]
    for n in numbers:
        arr = pixel_array(ds, index=n - 1)
        out.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return out


@audited_retrieve  # PS3.15 A.5.3.7
async def retrieve_frames(
    ctx: WebContext, request: Request, study: str, series: str, instance: str, frames: str
) -> Response:
    """Frames of an instance as multipart/related, native or as stored (PS3.18 10.4.1.3)."""
    numbers = frame_numbers(frames)
    ref = (await _refs(ctx, study, series, instance))[0]
    note_sent([ref])
    accept = accept_list(request.headers.get("accept"))
    stored = ref.transfer_syntax_uid
    media = FRAME_MEDIA_TYPES.get(stored) if is_encapsulated(stored) else None
    part_type = OCTET_STREAM
    syntax: str | None = None
    for a in accept:
        if a.media_type not in (MULTIPART, "*/*"):
            continue
        if media is not None and a.part_type == media and a.transfer_syntax in (None, ANY_SYNTAX, stored):
            part_type, syntax = media, stored
            break
        if a.part_type in (OCTET_STREAM, "", "*/*"):
            syntax = stored if a.transfer_syntax == ANY_SYNTAX or media is None else None
            break
    else:
        raise HTTPException(406, "frames are served as multipart/related")
    compressed = syntax is not None and media is not None
    try:
        data = await ctx.run(_frames, ctx.archive.store.absolute(ref.path), ref, numbers, compressed)
    except HTTPException:
        raise
    except Exception as exc:
        raise HTTPException(406 if not compressed else 500, f"cannot decode the frames: {exc}") from None
    writer = MultipartWriter(new_boundary())
    ts = syntax if compressed else "1.2.840.10008.1.2.1"
    content_type = f"{part_type}; transfer-syntax={ts}"

    async def parts() -> AsyncIterator[bytes]:
        for frame in data:
            yield writer.head(content_type) + frame
        yield writer.close()

    return _multipart(parts(), part_type, writer)


def _bulk_value(path: Path, tag_path: str) -> bytes:
    ds: Dataset = dcmread(path, force=True)
    parts = tag_path.strip("/").split("/")
    value: Any = ds
    try:
        for i, part in enumerate(parts):
            # Even positions are tags, odd ones item indexes: 00540016/0/00181072.
            value = value[int(part, 16)].value if i % 2 == 0 else value[int(part)]
    except (KeyError, IndexError, ValueError):
        raise HTTPException(404, f"no bulk data at {tag_path[:80]!r}") from None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise HTTPException(404, f"no bulk data at {tag_path[:80]!r}")


@audited_retrieve  # PS3.15 A.5.3.7
async def retrieve_bulkdata(
    ctx: WebContext, request: Request, study: str, series: str, instance: str, tag_path: str
) -> Response:
    """One bulk data value (PS3.18 10.4.1.4); HTTP Range on a single-part answer (RFC 9110 14)."""
    ref = (await _refs(ctx, study, series, instance))[0]
    note_sent([ref])
    value = await ctx.run(_bulk_value, ctx.archive.store.absolute(ref.path), tag_path)
    accept = accept_list(request.headers.get("accept"))
    multipart = any(a.media_type == MULTIPART for a in accept)
    range_header = request.headers.get("range")
    if range_header or (not multipart and accepts(accept, OCTET_STREAM)):
        start, end = 0, len(value) - 1
        status = 200
        headers = {"Accept-Ranges": "bytes"}
        if range_header:
            start, end = _byte_range(range_header, len(value))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(value)}"
        return Response(value[start : end + 1], status_code=status, media_type=OCTET_STREAM, headers=headers)
    writer = MultipartWriter(new_boundary())
    body = writer.head(OCTET_STREAM) + value + writer.close()
    return Response(body, media_type=writer.content_type(OCTET_STREAM))


def _byte_range(header: str, size: int) -> tuple[int, int]:
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise HTTPException(416, "one bytes range is supported")
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        raise HTTPException(416, "bad Range header") from None
    if start > end or start >= size:
        raise HTTPException(416, "range not satisfiable")
    return start, end


# ---------------------------------------------------------------- rendered


def _rendered(path: Path, frames: list[int] | None, media_type: str, params: dict[str, Any]) -> bytes:
    ds = dcmread(path, force=True)
    try:
        return render.render(ds, frames=frames, media_type=media_type, **params)
    except render.RenderError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _thumb(path: Path, media_type: str, size: int) -> bytes:
    ds = dcmread(path, force=True)
    try:
        return render.thumbnail(ds, media_type=media_type, size=size)
    except render.RenderError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise HTTPException(400, f"{name} is a number") from None


def render_params(query: Any) -> dict[str, Any]:
    """window, viewport and quality of PS3.18 8.3.5.1 as render() keyword arguments."""
    params: dict[str, Any] = {}
    if "window" in query:
        bits = query["window"].split(",")
        if len(bits) not in (2, 3):
            raise HTTPException(400, "window is center,width[,function]")
        function = bits[2].strip().upper() if len(bits) == 3 else "LINEAR"
        params["window"] = render.Window(_float(bits[0], "window"), _float(bits[1], "window"), function)
    if "viewport" in query:
        bits = query["viewport"].split(",")
        if len(bits) not in (2, 6):
            raise HTTPException(400, "viewport is vw,vh[,sx,sy,sw,sh]")
        try:
            numbers = [int(b) if b.strip() else None for b in bits]
        except ValueError:
            raise HTTPException(400, "viewport values are integers") from None
        if numbers[0] is None or numbers[1] is None or numbers[0] < 1 or numbers[1] < 1:
            raise HTTPException(400, "viewport width and height are positive")
        if numbers[0] > 8192 or numbers[1] > 8192:
            raise HTTPException(400, "viewport is at most 8192 pixels wide and high")
        params["viewport"] = render.Viewport(*numbers)  # type: ignore[arg-type]
    if "quality" in query:
        quality = query["quality"]
        if not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise HTTPException(400, "quality is 1 to 100")
        params["quality"] = int(quality)
    return params


def rendered_type(request: Request) -> str:
    """The image type of a rendered answer, by the Accept header (JPEG when anything goes)."""
    accept = accept_list(request.headers.get("accept"))
    chosen = accepts(accept, *render.RENDERED_TYPES)
    if chosen is None:
        raise HTTPException(406, "rendered images are image/jpeg, image/png or image/gif")
    return chosen


@audited_retrieve  # PS3.15 A.5.3.7
async def retrieve_rendered(
    ctx: WebContext,
    request: Request,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    frames: str | None = None,
) -> Response:
    """A rendered instance or frame (PS3.18 10.4.1.5), consumer image with window and viewport."""
    media_type = rendered_type(request)
    params = render_params(request.query_params)
    refs = await _refs(ctx, study, series, instance)
    ref = refs[len(refs) // 2] if instance is None else refs[0]
    note_sent([ref])
    numbers = frame_numbers(frames) if frames is not None else None
    body = await ctx.run(_rendered, ctx.archive.store.absolute(ref.path), numbers, media_type, params)
    return Response(body, media_type=media_type)


@audited_retrieve  # PS3.15 A.5.3.7
async def retrieve_thumbnail(
    ctx: WebContext, request: Request, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    """A small representative image of a study, series or instance (PS3.18 10.4.1.6)."""
    media_type = rendered_type(request)
    refs = await _refs(ctx, study, series, instance)
    ref = refs[len(refs) // 2]
    note_sent([ref])
    size = 128
    if "viewport" in request.query_params:
        params = render_params(request.query_params)
        size = max(params["viewport"].width, params["viewport"].height)
    body = await ctx.run(_thumb, ctx.archive.store.absolute(ref.path), media_type, size)
    return Response(body, media_type=media_type)
