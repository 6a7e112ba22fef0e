"""S3 XML: rendered documents parse back to what was put in; request documents
are parsed leniently (namespace optional) and anything malformed is MalformedXML.

Method: hypothesis round trips of arbitrary text through `element()` and an XML
parser (characters XML 1.0 cannot carry are dropped, never emitted raw); the
AWS documentation's request examples; malformed and hostile documents.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest
from hypothesis import given, strategies as st

from frontend.s3 import errors
from frontend.s3.xml import document, element, http_time, iso_time, parse

_XML_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@given(st.text(_XML_CHARS, max_size=40))
def test_rendered_text_round_trips(value):
    body = document("ListBucketResult", element("Key", value))
    parsed = ElementTree.fromstring(body)
    text = parsed.find("{http://s3.amazonaws.com/doc/2006-03-01/}Key").text or ""
    allowed = "".join(ch for ch in value if ch in "\t\n\r" or ord(ch) >= 0x20 and ch not in "\ufffe\uffff")
    assert text.replace("\r\n", "\n") == allowed.replace("\r\n", "\n").replace("\r", "\n") or text == allowed


def test_complete_multipart_upload_example_parses_with_and_without_namespace():
    example = b"""<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
      <Part><PartNumber>1</PartNumber><ETag>"a54357aff0632cce46d942af68356b38"</ETag></Part>
      <Part><PartNumber>2</PartNumber><ETag>"0c78aef83f66abc1fa1e8477f296d394"</ETag></Part>
    </CompleteMultipartUpload>"""
    for body in (example, example.replace(b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', b"")):
        tree = parse(body, "CompleteMultipartUpload", max_bytes=1 << 20)
        assert [part.findtext("PartNumber") for part in tree.findall("Part")] == ["1", "2"]


@pytest.mark.parametrize("body", [
    b"", b"<Delete>", b"<Other/>", b"not xml at all",
    b'<!DOCTYPE lolz [<!ENTITY lol "lol">]><Delete>&lol;</Delete>',
    b"<Delete>" + b"<Object><Key>k</Key></Object>" * 10 + b"</Delete>",
])
def test_malformed_documents_are_refused(body):
    with pytest.raises(errors.MalformedXML):
        parse(body, "Delete", max_bytes=200)


def test_times_are_s3_formats():
    assert iso_time(1_255_369_830_123_456) == "2009-10-12T17:50:30.123Z"
    assert http_time(1_255_369_830_999_999) == "Mon, 12 Oct 2009 17:50:30 GMT"
