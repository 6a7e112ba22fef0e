"""S3 XML: rendering response documents and parsing request documents.

Responses are rendered as strings (a LIST page of 1,000 keys must cost far less
than the request path itself); every text value passes through `text()`, which
escapes markup and drops characters XML 1.0 cannot carry.

Request documents (CompleteMultipartUpload, Delete, CreateBucketConfiguration)
are parsed with ElementTree after a size check; the namespace is optional, as
clients differ. Anything malformed raises MalformedXML.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import xml.etree.ElementTree as ElementTree
from typing import Iterable

from frontend.s3 import errors

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'

_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;"})


_NEEDS_WORK = re.compile('[\x00-\x1f&<>"\ud800-\udfff\ufffe\uffff]')
"""Any character `text()` escapes or drops; most values (keys, sizes, dates) have none."""


def text(value: object) -> str:
    string = value if type(value) is str else str(value)
    if _NEEDS_WORK.search(string) is None:  # fast path: a LIST page calls this ~5,000 times
        return string
    if _INVALID_XML_CHARS.search(string):
        string = _INVALID_XML_CHARS.sub(lambda match: f"&#{ord(match.group())};" if match.group() in "\t\n\r" else "", string)
    return string.translate(_ESCAPES)


def element(name: str, value: object) -> str:
    return f"<{name}>{text(value)}</{name}>"


def document(root: str, body: Iterable[str] | str) -> bytes:
    inner = body if isinstance(body, str) else "".join(body)
    return f'{HEADER}<{root} xmlns="{S3_NAMESPACE}">{inner}</{root}>'.encode("utf-8")


def iso_time(time_us: int) -> str:
    """S3's ISO 8601 form with milliseconds, e.g. 2009-10-12T17:50:30.000Z."""
    seconds, micros = divmod(time_us, 1_000_000)
    return f"{_iso_second(seconds)}{micros // 1000:03d}Z"


def http_time(time_us: int) -> str:
    """RFC 7231 IMF-fixdate, e.g. Wed, 12 Oct 2009 17:50:00 GMT (whole seconds)."""
    return _http_second(time_us // 1_000_000)


# Formatting a datetime costs ~2 µs; objects written together share their second,
# and every response's Date header is the current second: cache per second.
@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")


@functools.lru_cache(maxsize=4096)
def _http_second(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def parse(body: bytes, root: str, *, max_bytes: int) -> ElementTree.Element:
    """Parse a request document whose root element must be `root`."""
    if len(body) > max_bytes:
        raise errors.MalformedXML("The XML you provided was larger than the maximum allowed size.")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise errors.MalformedXML()
    try:
        tree = ElementTree.fromstring(body)
    except ElementTree.ParseError as error:
        raise errors.MalformedXML() from error
    _strip_namespaces(tree)
    if tree.tag != root:
        raise errors.MalformedXML()
    return tree


def _strip_namespaces(node: ElementTree.Element) -> None:
    for item in node.iter():
        if isinstance(item.tag, str) and item.tag.startswith("{"):
            item.tag = item.tag.split("}", 1)[1]


def child_text(node: ElementTree.Element, name: str, default: str | None = None) -> str | None:
    found = node.find(name)
    if found is None:
        return default
    return found.text or ""
