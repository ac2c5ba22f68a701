"""Read one uploaded file from a request body: in memory, bounded while streaming, never on disk.

Starlette's form parser spools files above 1 MB to a temporary file: a patient image on
disk. We parse multipart ourselves with python-multipart's streaming parser instead, and
stop reading the moment the body passes `max_bytes`. A raw body with an image or DICOM
content type is accepted too (`curl --data-binary @scan.dcm -H 'Content-Type: application/dicom'`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from service.decode.formats import RAW_MEDIA_TYPES
from service.errors import ErrorCode, ServiceError

FIELD_NAME = b"file"
RAW_CONTENT_TYPES = frozenset(media_type.encode() for media_type in RAW_MEDIA_TYPES)


async def read_upload(content_type: str | None, content_length: str | None, body: AsyncIterator[bytes], *, max_bytes: int) -> bytes:
    """Return the bytes of the multipart field `file`, or of a raw image body."""
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise too_large(max_bytes)
    media_type, options = parse_options_header(content_type)
    try:
        if media_type == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise ServiceError(ErrorCode.INVALID_REQUEST, "multipart body without a boundary")
            return await _read_multipart_file(boundary, body, max_bytes)
        if media_type in RAW_CONTENT_TYPES:
            return await _read_all(body, max_bytes)
    except ClientDisconnect:  # an aborted upload is the client's doing, not a server error
        raise ServiceError(ErrorCode.CLIENT_DISCONNECTED, "the client closed the connection during the upload") from None
    raise ServiceError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        "send multipart/form-data with a field 'file', or a raw body as " + _media_type_list(),
    )


def _media_type_list() -> str:
    """"image/png, image/jpeg or application/dicom": the formats' own media types, from the format table."""
    own = [media_type for media_type in RAW_MEDIA_TYPES if media_type != "application/octet-stream"]
    return ", ".join(own[:-1]) + f" or {own[-1]}"


def too_large(max_bytes: int) -> ServiceError:
    return ServiceError(ErrorCode.PAYLOAD_TOO_LARGE, f"the request body exceeds {max_bytes} bytes")


async def _bounded(body: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks, refused with 413 the moment their total passes `max_bytes`."""
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        yield chunk


async def _read_all(body: AsyncIterator[bytes], max_bytes: int) -> bytes:
    return b"".join([chunk async for chunk in _bounded(body, max_bytes)])


class _FileCollector:
    """python-multipart callbacks that keep the first part named `file` and drop the rest."""

    def __init__(self) -> None:
        self.file: list[bytes] | None = None
        self.done = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._is_file_part = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._is_file_part = False

    def on_header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            _, params = parse_options_header(bytes(self._header_value))
            self._is_file_part = params.get(b"name") == FIELD_NAME and self.file is None and not self.done
            if self._is_file_part:
                self.file = []
        self._header_field.clear()
        self._header_value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file_part and self.file is not None:
            self.file.append(data[start:end])

    def on_part_end(self) -> None:
        if self._is_file_part:
            self.done = True
        self._is_file_part = False


async def _without_preamble(chunks: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[bytes]:
    """The body from its first boundary line on: RFC 2046 allows a preamble before it, which
    python-multipart refuses. A body without any boundary is passed on whole, for the parser to refuse."""
    delimiter = b"\r\n--" + boundary
    pending = b"\r\n"  # the first boundary may open the body, with no line break before it
    async for chunk in chunks:
        pending += chunk
        found = pending.find(delimiter)
        if found >= 0:
            yield pending[found + 2 :]
            break
        pending = pending[-len(delimiter) :]  # a delimiter may straddle two chunks
    else:
        yield pending[2:]
        return
    async for chunk in chunks:
        yield chunk


async def _read_multipart_file(boundary: bytes, body: AsyncIterator[bytes], max_bytes: int) -> bytes:
    collector = _FileCollector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        async for chunk in _without_preamble(_bounded(body, max_bytes), boundary):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise ServiceError(ErrorCode.INVALID_REQUEST, "the multipart body is malformed") from error
    if collector.file is None:
        raise ServiceError(ErrorCode.MISSING_FILE, "the multipart body has no field named 'file'")
    if not collector.done:
        raise ServiceError(ErrorCode.INVALID_REQUEST, "the multipart body ended inside the 'file' field")
    return b"".join(collector.file)
