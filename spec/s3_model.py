"""The S3 semantics Cairn promises, as naive as possible: the oracle (DESIGN §10).

A dict of buckets, each a dict of keys to objects, plus the in-progress multipart
uploads with their parts. Pure synchronous Python, no I/O, written from S3's
documented behaviour (not from Cairn's handlers). Every operation returns either
a result or an error code string, the S3 error code of the answer ("NoSuchKey",
"NotModified", ...). Buckets are unversioned; everything is one owner.

Rules it encodes, each as S3 documents it:
- a single-part ETag is the hex MD5 of the body; a multipart ETag is the MD5 of
  the concatenated binary part MD5s, then "-N"; a copy is a new single-part
  object (its ETag is the MD5 of its bytes);
- PUT and CompleteMultipartUpload conditions: If-None-Match "*" fails with
  PreconditionFailed when the key exists; If-Match fails with NoSuchKey when it
  does not, PreconditionFailed when its ETag differs;
- GET/HEAD: If-Match (412) is checked before If-None-Match (304), both before the
  range; a range starting at or past the end, a zero suffix, or any range of an
  empty object is InvalidRange (416); an end past the last byte is clamped;
- listing orders keys by raw UTF-8 bytes; with a delimiter, keys sharing
  prefix + ... + delimiter roll up into one common prefix, which counts toward
  max_keys; a page boundary is the last key or common prefix returned, and the
  next page skips the whole prefix when the boundary was a common prefix;
- CompleteMultipartUpload checks part order (InvalidPartOrder), then that each
  part exists with that ETag (InvalidPart), then sizes: every part but the last
  is at least min_part_size (EntityTooSmall); parts not listed are dropped;
- a bucket with objects or in-progress uploads is not empty (Cairn's promise,
  DESIGN §11); CreateBucket of one's own bucket is BucketAlreadyOwnedByYou;
- CRC32 checksums: a PUT stores the one the client sent; a multipart object
  created with CRC32 gets the composite base64(CRC32(part CRC32s)) + "-N"; a
  copy gets the whole-object checksum of the source's algorithm.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import itertools
import re
import zlib
from dataclasses import dataclass, field

from spec.metadata_model import is_common_prefix

DEFAULT_CONTENT_TYPE = "binary/octet-stream"


def crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Object:
    body: bytes
    etag: str  # as on the wire, with quotes
    metadata: dict
    content_type: str
    checksums: dict  # algorithm name ("CRC32") -> base64 value (composite ones end in "-N")
    generation: int  # counts writes in the model: a newer write has a larger generation


@dataclass(frozen=True)
class Part:
    body: bytes
    etag: str
    crc32: bytes


@dataclass
class Upload:
    upload_id: str  # the model's own; tests map the server's ids to these
    bucket: str
    key: str
    metadata: dict
    content_type: str
    checksum_algorithm: str | None
    parts: dict = field(default_factory=dict)  # part number -> Part


_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def valid_bucket_name(name: str) -> bool:
    if not _BUCKET_NAME.match(name) or ".." in name or name.startswith("xn--") or name.endswith("-s3alias"):
        return False
    try:
        ipaddress.IPv4Address(name)
        return False
    except ValueError:
        return True


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """None for no (or an unparsable) range, (first, last) inclusive, or "InvalidRange"."""
    if header is None:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header)
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # suffix: the last n bytes
        length = int(last)
        if length == 0 or size == 0:
            return "InvalidRange"
        return (max(0, size - length), size - 1)
    if last != "" and int(last) < int(first):
        return None  # syntactically invalid: ignored, the whole object is returned
    if int(first) >= size:
        return "InvalidRange"
    return (int(first), size - 1 if last == "" else min(int(last), size - 1))


class S3Model:
    def __init__(self, min_part_size: int = 5 * 1024 * 1024) -> None:
        self.min_part_size = min_part_size
        self.buckets: dict[str, dict[str, Object]] = {}
        self.uploads: dict[str, Upload] = {}
        self._ids = itertools.count(1)

    # ---- buckets -------------------------------------------------------

    def create_bucket(self, bucket: str):
        if not valid_bucket_name(bucket):
            return "InvalidBucketName"
        if bucket in self.buckets:
            return "BucketAlreadyOwnedByYou"
        self.buckets[bucket] = {}
        return None

    def delete_bucket(self, bucket: str):
        if bucket not in self.buckets:
            return "NoSuchBucket"
        if self.buckets[bucket] or any(u.bucket == bucket for u in self.uploads.values()):
            return "BucketNotEmpty"
        del self.buckets[bucket]
        return None

    def head_bucket(self, bucket: str):
        return None if bucket in self.buckets else "NoSuchBucket"

    def list_buckets(self) -> list[str]:
        return sorted(self.buckets)

    # ---- objects -------------------------------------------------------

    def _write(self, bucket, key, body, etag, metadata, content_type, checksums):
        self.buckets[bucket][key] = Object(body, etag, dict(metadata), content_type or DEFAULT_CONTENT_TYPE,
                                           dict(checksums), next(self._ids))
        return self.buckets[bucket][key]

    def _write_condition(self, bucket, key, if_none_match, if_match):
        current = self.buckets[bucket].get(key)
        if if_none_match == "*" and current is not None:
            return "PreconditionFailed"
        if if_match is not None:
            if current is None:
                return "NoSuchKey"
            if current.etag != if_match:
                return "PreconditionFailed"
        return None

    def put_object(self, bucket, key, body: bytes, metadata=None, content_type=None,
                   if_none_match=None, if_match=None, crc32_checksum: bool = True):
        if bucket not in self.buckets:
            return "NoSuchBucket"
        refused = self._write_condition(bucket, key, if_none_match, if_match)
        if refused:
            return refused
        checksums = {"CRC32": b64(crc32(body))} if crc32_checksum else {}
        return self._write(bucket, key, body, f'"{hashlib.md5(body).hexdigest()}"', metadata or {},
                           content_type, checksums)

    def _read(self, bucket, key, if_match=None, if_none_match=None):
        if bucket not in self.buckets:
            return "NoSuchBucket"
        current = self.buckets[bucket].get(key)
        if current is None:
            return "NoSuchKey"
        if if_match is not None and if_match not in ("*", current.etag):
            return "PreconditionFailed"
        if if_none_match is not None and if_none_match in ("*", current.etag):
            return "NotModified"
        return current

    def head_object(self, bucket, key, if_match=None, if_none_match=None):
        """The object (for its ETag, size, metadata, content type, checksums) or an error."""
        return self._read(bucket, key, if_match, if_none_match)

    def get_object(self, bucket, key, range_header=None, if_match=None, if_none_match=None):
        """(object, body bytes returned, (first, last) or None for the whole body) or an error."""
        current = self._read(bucket, key, if_match, if_none_match)
        if isinstance(current, str):
            return current
        byte_range = parse_range(range_header, len(current.body))
        if byte_range == "InvalidRange":
            return "InvalidRange"
        if byte_range is None:
            return current, current.body, None
        first, last = byte_range
        return current, current.body[first:last + 1], byte_range

    def delete_object(self, bucket, key):
        if bucket not in self.buckets:
            return "NoSuchBucket"
        self.buckets[bucket].pop(key, None)
        return None

    def delete_objects(self, bucket, keys: list[str], quiet: bool = False):
        """The keys reported Deleted (every key, absent or not; none when quiet)."""
        if bucket not in self.buckets:
            return "NoSuchBucket"
        for key in keys:
            self.buckets[bucket].pop(key, None)
        return [] if quiet else list(keys)

    def copy_object(self, source_bucket, source_key, bucket, key, directive="COPY",
                    metadata=None, content_type=None):
        if source_bucket not in self.buckets or bucket not in self.buckets:
            return "NoSuchBucket"
        source = self.buckets[source_bucket].get(source_key)
        if source is None:
            return "NoSuchKey"
        if (source_bucket, source_key) == (bucket, key) and directive == "COPY":
            return "InvalidRequest"  # a copy onto itself must change something
        if directive == "COPY":
            metadata, content_type = source.metadata, source.content_type
        checksums = {algorithm: b64(crc32(source.body)) for algorithm in source.checksums}
        return self._write(bucket, key, source.body, f'"{hashlib.md5(source.body).hexdigest()}"',
                           metadata or {}, content_type, checksums)

    def list_objects_v2(self, bucket, prefix="", delimiter=None, max_keys=1000, start_after="",
                        boundary: tuple[str, bool] | None = None):
        """One page: (contents [Object key...], common prefixes, truncated, boundary).

        `boundary` is the previous page's (last key or prefix returned, whether it was a
        common prefix), which is what a continuation token carries."""
        if bucket not in self.buckets:
            return "NoSuchBucket"
        after = start_after.encode() if boundary is None else boundary[0].encode()
        if boundary is not None:
            skip_prefix = boundary[0].encode() if boundary[1] else None
        else:       # a StartAfter that is itself a rolled-up prefix skips all of it (common/seams.py rule 7)
            skip_prefix = after if is_common_prefix(after, prefix.encode(), (delimiter or "").encode()) else None
        entries: list[tuple[bytes, bool]] = []  # (key or common prefix, is_prefix), in byte order
        for raw in sorted(key.encode() for key in self.buckets[bucket]):
            if not raw.startswith(prefix.encode()) or raw <= after:
                continue
            if skip_prefix is not None and raw.startswith(skip_prefix):
                continue
            rest = raw[len(prefix.encode()):]
            if delimiter and delimiter.encode() in rest:
                rolled = prefix.encode() + rest[:rest.index(delimiter.encode()) + len(delimiter.encode())]
                if not entries or entries[-1] != (rolled, True):
                    entries.append((rolled, True))
            else:
                entries.append((raw, False))
        page, truncated = entries[:max_keys], len(entries) > max_keys
        keys = [raw.decode() for raw, is_prefix in page if not is_prefix]
        prefixes = [raw.decode() for raw, is_prefix in page if is_prefix]
        last = (page[-1][0].decode(), page[-1][1]) if page else None
        return keys, prefixes, truncated, last if truncated else None

    # ---- multipart -----------------------------------------------------

    def create_multipart_upload(self, bucket, key, metadata=None, content_type=None, checksum_algorithm=None):
        """The new Upload or an error."""
        if bucket not in self.buckets:
            return "NoSuchBucket"
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = Upload(upload_id, bucket, key, dict(metadata or {}), content_type or DEFAULT_CONTENT_TYPE,
                                         checksum_algorithm)
        return self.uploads[upload_id]

    def _upload(self, bucket, key, upload_id):
        if bucket not in self.buckets:
            return "NoSuchBucket"
        upload = self.uploads.get(upload_id)
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            return "NoSuchUpload"
        return upload

    def upload_part(self, bucket, key, upload_id, part_number: int, body: bytes):
        upload = self._upload(bucket, key, upload_id)
        if isinstance(upload, str):
            return upload
        part = Part(body, f'"{hashlib.md5(body).hexdigest()}"', crc32(body))
        upload.parts[part_number] = part
        return part

    def list_parts(self, bucket, key, upload_id):
        """[(part number, Part)] in part-number order, or an error."""
        upload = self._upload(bucket, key, upload_id)
        if isinstance(upload, str):
            return upload
        return sorted(upload.parts.items())

    def abort_multipart_upload(self, bucket, key, upload_id):
        upload = self._upload(bucket, key, upload_id)
        if isinstance(upload, str):
            return upload
        del self.uploads[upload_id]
        return None

    def complete_multipart_upload(self, bucket, key, upload_id, parts: list[tuple[int, str]],
                                  if_none_match=None, if_match=None):
        upload = self._upload(bucket, key, upload_id)
        if isinstance(upload, str):
            return upload
        numbers = [number for number, _ in parts]
        if numbers != sorted(set(numbers)):
            return "InvalidPartOrder"
        chosen = []
        for number, etag in parts:
            part = upload.parts.get(number)
            if part is None or part.etag.strip('"') != etag.strip('"'):
                return "InvalidPart"
            chosen.append(part)
        if any(len(part.body) < self.min_part_size for part in chosen[:-1]):
            return "EntityTooSmall"
        refused = self._write_condition(bucket, key, if_none_match, if_match)
        if refused:
            return refused
        del self.uploads[upload_id]
        digest = hashlib.md5(b"".join(bytes.fromhex(part.etag.strip('"')) for part in chosen)).hexdigest()
        checksums = {}
        if upload.checksum_algorithm == "CRC32":
            checksums["CRC32"] = f"{b64(crc32(b''.join(part.crc32 for part in chosen)))}-{len(chosen)}"
        return self._write(bucket, key, b"".join(part.body for part in chosen), f'"{digest}-{len(chosen)}"',
                           upload.metadata, upload.content_type, checksums)
