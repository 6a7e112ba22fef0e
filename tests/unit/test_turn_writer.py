"""Property: `TurnWriter` (common/framing.py; framed connections and the HTTP
frontend write through it) sends the small writes of one event loop turn in one
write, keeps every byte in the order it was written (a large write goes at once,
after what waits), sends what waits before a close and nothing after an abort, and
passes everything else through.

Method: the writer over a recording stand-in transport on a real uvloop loop. Over
real sockets: framed connections in tests/unit/test_framing.py, the HTTP behaviour
(keep-alive, 100-continue, chunked bodies, the 400 of the parser, TLS) in
tests/integration/test_s3_http.py.
"""

from __future__ import annotations

import asyncio

import uvloop

from common.framing import TurnWriter


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, chunks) -> None:
        self.calls.append(("writelines", b"".join(chunks)))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def get_extra_info(self, name, default=None):
        return ("peer", name)


def test_one_turns_small_writes_leave_together_and_in_order():
    async def main():
        inner = Recording()
        transport = TurnWriter(inner)
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"")
        transport.write(b"small body")
        assert inner.calls == []
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert inner.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nsmall body")]
        inner.calls.clear()
        large = b"x" * TurnWriter.LARGE_WRITE_BYTES
        transport.write(b"head;")
        transport.write(large)                       # at once, with what waits before it
        assert inner.calls == [("writelines", b"head;" + large)]
        transport.write(large)                       # nothing waits: a plain write
        transport.writelines([b"a", b"b"])
        transport.close()                            # what waits goes before the close
        assert inner.calls[1:] == [("write", large), ("write", b"ab"), ("close", b"")]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(inner.calls) == 4                 # the flush scheduled before found nothing left
        assert transport.get_extra_info("peername") == ("peer", "peername")

        inner = Recording()
        transport = TurnWriter(inner)
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert inner.calls == [("abort", b"")]
    uvloop.run(main())
