"""WebDataset-style shards: `.tar` files (or `.tar.gz`, `.tgz`) of images, read as a stream, never unpacked.

A shard is named by a local path, a glob pattern, or any URL fsspec opens (s3://, gs://, https://, ...), with
WebDataset's brace ranges expanded (`shards/train-{000000..000099}.tar`, by the `braceexpand` library that
WebDataset itself uses). Its members are read in order with tarfile's streaming mode ("r|*"), so a remote shard is
read once, front to back, and only one member's bytes are held at a time. Each image member (by its extension, as
in a folder) is one image; the other members of a sample (.cls, .json, .txt) are skipped. An image is named by its
fsspec URL, `tar://MEMBER::SHARD`, which fsspec opens again.
"""
from __future__ import annotations

import glob
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..core.errors import UserError
from .find import IMAGE_EXTENSIONS, natural_key

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_MEMBER_BYTES = 64 * 2**20  # an image member larger than this fails its own row unread (a 24-megapixel JPEG
#                                is about 10 MB; a member this large is not a photo, and would be held in memory)


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


def shard_images(shard: str) -> Iterator[tuple[str, bytes | str]]:
    """(name, bytes) for each image member of one shard, in the shard's order; (name, why) for a member that cannot
    be read (too large), and (the shard, why) for a shard that cannot be opened or ends in the middle of a member:
    one bad shard fails its own row, never a job over many."""
    import fsspec
    try:
        stream = fsspec.open(shard, "rb").open()
    except Exception as exc:  # noqa: BLE001 - fsspec raises what its filesystem raises
        yield shard, f"cannot open the shard: {type(exc).__name__}: {exc}"
        return
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        stream.close()
        yield shard, f"cannot open the shard: not a tar archive ({exc})"
        return
    with stream, tar:
        try:
            for member in tar:
                if not member.isfile() or PurePosixPath(member.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                name = member_url(shard, member.name)
                if member.size > MAX_MEMBER_BYTES:
                    yield name, f"too large: {member.size} bytes (the limit for a member is {MAX_MEMBER_BYTES})"
                    continue
                data = tar.extractfile(member)
                yield name, data.read() if data is not None else "not a regular file"
        except (tarfile.TarError, EOFError, OSError) as exc:
            yield shard, f"the shard is damaged after its last readable member: {type(exc).__name__}: {exc}"


def shard_batches(shards: list[str], size: int) -> Iterator[tuple[list[str], list[bytes | str]]]:
    """The images of the shards in order, `size` at a time: (names, bytes or why each cannot be read)."""
    names: list[str] = []
    items: list[bytes | str] = []
    for shard in shards:
        for name, item in shard_images(shard):
            names.append(name)
            items.append(item)
            if len(names) == size:
                yield names, items
                names, items = [], []
    if names:
        yield names, items
