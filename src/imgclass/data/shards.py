"""WebDataset-style shards: `.tar` files (or `.tar.gz`, `.tgz`) of images, read as a stream, never unpacked.

A shard is named by a local path, a glob pattern, or any URL fsspec opens (s3://, gs://, https://, ...), with
WebDataset's brace ranges expanded (`shards/train-{000000..000099}.tar`, by the `braceexpand` library that
WebDataset itself uses). Its members are read in order with tarfile's streaming mode ("r|*"), so a remote shard is
read once, front to back, and only one member's bytes are held at a time. Each image member (by its extension, as
in a folder) is one image; the other members of a sample (.cls, .json, .txt) are skipped. An image is named by its
fsspec URL, `tar://MEMBER::SHARD`, which fsspec opens again.

The tar headers are read here, not by Python's tarfile, on purpose (WebDataset reads through tarfile too): in its
streaming mode tarfile reads a pax or GNU long-name header's data whole, of any size the header claims (a 6 MB
.tar.gz asked for 6 GiB), keeps every member's TarInfo for the whole stream, and ends the iteration without a word
at an invalid header after the first member. Here a header's data is bounded (MAX_HEADER_BYTES), nothing is kept
past its member, a member too large is skipped unread, and a damaged or cut shard ends with an error row.
"""
from __future__ import annotations

import glob
import gzip
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

from ..core.errors import UserError
from .find import IMAGE_EXTENSIONS, natural_key

T = TypeVar("T")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_MEMBER_BYTES = 64 * 2**20  # an image member larger than this fails its own row unread (a 24-megapixel JPEG
#                                is about 10 MB; a member this large is not a photo, and would be held in memory)
MAX_CHUNK_BYTES = 256 * 2**20  # image bytes held at once by predict's chunks of a shard job (256 members of 64 MiB
#                                would be 16 GiB): a chunk ends at this many bytes or its count of images
MAX_HEADER_BYTES = 2**20       # a pax or GNU long-name header's data at most (a name and a few attributes)
BLOCK = 512
REGULAR = (b"0", b"\0", b"7")  # tar's type flags of a regular file (7: contiguous)


def is_shard(spec: str | Path) -> bool:
    """Whether an input names shards: each of its brace expansions ends in a shard suffix, or is a local glob
    pattern whose matches all do."""
    from braceexpand import braceexpand
    for item in braceexpand(str(spec)):
        if item.lower().endswith(SHARD_SUFFIXES):
            continue
        matches = glob.glob(str(Path(item).expanduser())) if any(c in item for c in "*?[") else []
        if not matches or not all(m.lower().endswith(SHARD_SUFFIXES) for m in matches):
            return False
    return True


def expand_shards(spec: str | Path) -> list[str]:
    """The shards one input names: brace ranges expanded, then local globs; URLs are kept as they are."""
    from braceexpand import braceexpand
    shards: list[str] = []
    for item in braceexpand(str(spec)):
        if "://" in item:
            shards.append(item)
        elif any(c in item for c in "*?["):
            matches = sorted(glob.glob(str(Path(item).expanduser())), key=natural_key)
            if not matches:
                raise UserError(f"no shards match {item}")
            shards += matches
        elif Path(item).expanduser().is_file():
            shards.append(str(Path(item).expanduser()))
        else:
            raise UserError(f"no such shard: {item}")
    return shards


def shards_of(inputs: list) -> list[str]:
    """The shards a command's inputs name ([] when they name none): all of them shards, or none of them."""
    named = [isinstance(i, (str, Path)) and is_shard(i) for i in inputs]
    if any(named) and not all(named):
        raise UserError("give either .tar shards or image files and folders, not both in one command")
    return [shard for i, is_one in zip(inputs, named) if is_one for shard in expand_shards(i)]


def member_url(shard: str, member: str) -> str:
    """An image inside a shard, as fsspec names it (fsspec.open reads it again)."""
    return f"tar://{member}::{shard}"


class DamagedShard(Exception):
    """A shard that cannot be read on from here (its reason is the message)."""


def _number(field: bytes) -> int:
    """A header's number: octal text, or base-256 (GNU, for sizes of 8 GiB and more) when the top bit is set."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise DamagedShard(f"a header's number is not a number: {text[:20]!r}") from None


def _read(stream: BinaryIO, n: int) -> bytes:
    """n bytes, fewer only at the end of the stream."""
    parts, left = [], n
    while left > 0:
        part = stream.read(min(left, 2**20))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _skip(stream: BinaryIO, n: int) -> None:
    while n > 0:
        part = stream.read(min(n, 2**20))
        if not part:
            raise DamagedShard("it ends in the middle of a member")
        n -= len(part)


def _header(block: bytes) -> tuple[str, int, bytes]:
    """(name, size, type flag) of a 512-byte ustar/GNU header, its checksum checked."""
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise DamagedShard("a header's checksum does not match (not a tar archive, or damaged)")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and block[345:500].strip(b"\0"):
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "replace"), _number(block[124:136]), block[156:157]


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header: "LENGTH KEY=VALUE\\n" each."""
    records, i = {}, 0
    while i < len(data) and data[i:i + 1] not in (b"", b"\0"):
        length = data[i:].split(b" ", 1)[0]
        if not length.isdigit() or int(length) <= len(length):
            raise DamagedShard("a pax header is malformed")
        record = data[i:i + int(length)]
        key, _, value = record[len(length) + 1:].rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        i += int(length)
    return records


def _extension(stream: BinaryIO, size: int, what: str) -> bytes:
    """A pax or GNU long-name header's data, bounded (tarfile reads any size a header claims, whole)."""
    if size > MAX_HEADER_BYTES:
        raise DamagedShard(f"a {what} header of {size} bytes (the limit is {MAX_HEADER_BYTES}): refused")
    data = _read(stream, size)
    if len(data) < size:
        raise DamagedShard("it ends in the middle of a header")
    _skip(stream, -size % BLOCK)
    return data


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, int, bool]]:
    """(name, size, regular file) for each member of an uncompressed tar stream, in order. The caller reads or
    skips the member's size bytes before asking for the next; the padding after them is skipped here. Ends at the
    archive's end (a zero block, or the stream's end between members); raises DamagedShard where it cannot go on."""
    pending: dict[str, str] = {}
    while True:
        block = _read(stream, BLOCK)
        if not block or block == bytes(BLOCK):
            return
        if len(block) < BLOCK:
            raise DamagedShard("it ends in the middle of a header")
        name, size, kind = _header(block)
        if kind in (b"x", b"g"):  # pax: x for the next member, g for every member (nothing of it is used here)
            records = _pax(_extension(stream, size, "pax"))
            if kind == b"x":
                pending.update(records)
            continue
        if kind in (b"L", b"K"):  # GNU long name (L) or long link name (K) of the next member
            data = _extension(stream, size, "long-name")
            if kind == b"L":
                pending["path"] = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        name = pending.pop("path", name)
        if "size" in pending:  # pax gives sizes of 8 GiB and more, in decimal
            if not pending["size"].isdigit():
                raise DamagedShard("a pax header's size is not a number")
            size = int(pending["size"])
        pending.clear()
        yield name, size, kind in REGULAR
        _skip(stream, -size % BLOCK)


class _Joined:
    """A stream with bytes already read put back in front (the first two, read to tell gzip from plain tar)."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(n)
        if n < 0:
            out, self.head = self.head, b""
            return out + self.rest.read()
        out, self.head = self.head[:n], self.head[n:]
        return out + self.rest.read(n - len(out)) if len(out) < n else out


def shard_images(shard: str) -> Iterator[tuple[str, bytes | str]]:
    """(name, bytes) for each image member of one shard, in the shard's order; (name, why) for a member that cannot
    be read (too large), and (the shard, why) for a shard that cannot be opened, is damaged or ends in the middle
    of a member: one bad shard fails its own row, never a job over many."""
    import fsspec
    try:
        raw = fsspec.open(shard, "rb").open()
    except Exception as exc:  # noqa: BLE001 - fsspec raises what its filesystem raises
        yield shard, f"cannot open the shard: {type(exc).__name__}: {exc}"
        return
    with raw:
        head = raw.read(2)
        stream = _Joined(head, raw)
        if head == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=stream)  # type: ignore[arg-type]
        members = seen = 0
        try:
            for name, size, regular in tar_members(stream):  # type: ignore[arg-type]
                seen += 1
                if not regular or PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    _skip(stream, size)  # type: ignore[arg-type]
                    continue
                members += 1
                url = member_url(shard, name)
                if size > MAX_MEMBER_BYTES:
                    _skip(stream, size)  # type: ignore[arg-type]
                    yield url, f"too large: {size} bytes (the limit for a member is {MAX_MEMBER_BYTES})"
                    continue
                data = _read(stream, size)  # type: ignore[arg-type]
                if len(data) < size:
                    raise DamagedShard("it ends in the middle of a member")
                yield url, data
        except (DamagedShard, OSError, EOFError, zlib.error, MemoryError) as exc:
            reason = str(exc) if isinstance(exc, DamagedShard) else f"{type(exc).__name__}: {exc}"
            if not seen:
                yield shard, f"cannot open the shard: not a tar archive ({reason})"
            else:
                where = "after its last readable member" if members else "before any image"
                yield shard, f"the shard is damaged {where}: {reason}"


def bounded_chunks(members: Iterable[T], size: int, max_bytes: int | None = None,
                   item: Callable[[T], bytes | str] = lambda member: member[1]) -> Iterator[list[T]]:
    """Members in order, `size` at a time, a chunk ending before the member that would take its bytes over
    max_bytes (default MAX_CHUNK_BYTES; a member alone holds at most MAX_MEMBER_BYTES): what predict and Ray's
    tasks hold at once. item: a member's bytes, or why it cannot be read (a str, which holds none)."""
    limit = MAX_CHUNK_BYTES if max_bytes is None else max_bytes
    chunk: list[T] = []
    held = 0
    for member in members:
        data = item(member)
        n = len(data) if isinstance(data, bytes) else 0
        if chunk and held + n > limit:
            yield chunk
            chunk, held = [], 0
        chunk.append(member)
        held += n
        if len(chunk) == size:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def shard_batches(shards: list[str], size: int, max_bytes: int | None = None
                  ) -> Iterator[tuple[list[str], list[bytes | str]]]:
    """The images of the shards in order, in bounded_chunks: (names, bytes or why each cannot be read). The
    caller lets go of a chunk before asking for the next, or two are held."""
    members = (pair for shard in shards for pair in shard_images(shard))
    for chunk in bounded_chunks(members, size, max_bytes):
        names, items = zip(*chunk)
        del chunk
        yield list(names), list(items)
        del names, items  # held here, they would stay while the next chunk is read
