"""Property: the framed protocol (common/framing.py) answers every call by id, whatever the order
answers come in, keeps payloads intact, and fails calls — never hangs — when the peer dies,
misbehaves or is slow.

Method: a real server and clients on 127.0.0.1 loopback sockets in one uvloop event loop
(no mocks): round trips, answers sent in reverse and random order, 2,000 calls in flight,
payloads of several MiB (checked by digest, and read into their own buffer), a raw socket
that dies mid-frame, deadline expiry, malformed frames (bad magic, oversized, unparsable
header) each closing the connection, the in-flight bound pausing reads, reconnect after a
server restart, corked writes. Every server and client is closed by the test that made it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct

import pytest
import uvloop

from common import framing
from common.framing import Client, ConnectionLost, DeadlineExceeded, ProtocolError, RemoteError, Server

ECHO, HOLD, BOOM, NOTE = 1, 2, 3, 4


def run(coroutine):
    return uvloop.run(coroutine)


class Echo:
    """Kinds: ECHO answers at once; HOLD keeps requests until release(order); BOOM raises; NOTE is one-way."""

    def __init__(self) -> None:
        self.held: list = []
        self.notes: list = []

    def echo(self, connection, frame) -> None:
        connection.reply(frame.id, ECHO, frame.meta, frame.payload)

    def hold(self, connection, frame) -> None:
        self.held.append((connection, frame))

    def boom(self, connection, frame) -> None:
        raise ValueError("handler failed")

    def note(self, connection, frame) -> None:
        self.notes.append(bytes(frame.payload))
        connection.send(NOTE, b"", b"seen:" + bytes(frame.payload))

    def release(self, order) -> None:
        held, self.held = self.held, []
        for index in order:
            connection, frame = held[index]
            connection.reply(frame.id, HOLD, frame.meta, frame.payload)

    async def server(self, **options) -> Server:
        handlers = {ECHO: self.echo, HOLD: self.hold, BOOM: self.boom, NOTE: self.note}
        return await Server(handlers, **options).start("127.0.0.1", 0)


def test_round_trip_and_kinds():
    async def main():
        echo = Echo()
        server = await echo.server()
        client = Client("127.0.0.1", server.port)
        try:
            answer = await client.call(ECHO, b"meta", b"payload", timeout_s=2)
            assert (answer.kind, answer.meta, bytes(answer.payload)) == (ECHO, b"meta", b"payload")
            empty = await client.call(ECHO, timeout_s=2)
            assert (empty.meta, bytes(empty.payload)) == (b"", b"")
            with pytest.raises(RemoteError, match="handler failed"):
                await client.call(BOOM, timeout_s=2)
            with pytest.raises(RemoteError, match="unknown kind"):
                await client.call(99, timeout_s=2)
            assert (await client.call(ECHO, b"", b"still open", timeout_s=2)).payload == b"still open"
        finally:
            await client.close()
            await server.close()
    run(main())


def test_out_of_order_answers_are_matched_by_id():
    async def main():
        echo = Echo()
        server = await echo.server()
        client = Client("127.0.0.1", server.port)
        try:
            count = 50
            calls = [asyncio.ensure_future(client.call(HOLD, str(i).encode(), bytes([i]) * i, timeout_s=5))
                     for i in range(count)]
            while len(echo.held) < count:
                await asyncio.sleep(0.005)
            order = list(range(count))
            random.Random(7).shuffle(order)
            echo.release(order)
            answers = await asyncio.gather(*calls)
            for i, answer in enumerate(answers):
                assert answer.meta == str(i).encode() and bytes(answer.payload) == bytes([i]) * i
        finally:
            await client.close()
            await server.close()
    run(main())


def test_many_in_flight_on_one_connection():
    async def main():
        echo = Echo()
        server = await echo.server()
        client = Client("127.0.0.1", server.port, max_in_flight=4096)
        try:
            payloads = [random.randbytes(random.randrange(0, 3000)) for _ in range(2000)]
            answers = await asyncio.gather(*(client.call(ECHO, b"", p, timeout_s=10) for p in payloads))
            assert [bytes(a.payload) for a in answers] == payloads
            assert len(server.connections) == 1
        finally:
            await client.close()
            await server.close()
    run(main())


def test_large_payloads_intact_and_read_in_place():
    async def main():
        echo = Echo()
        server = await echo.server()
        client = Client("127.0.0.1", server.port)
        try:
            window, large = framing.RECEIVE_WINDOW_BYTES, framing.LARGE_PAYLOAD_BYTES
            sizes = (3 << 20, 5 << 20 | 12345, large, large - 1, window - 1, window + 1, 3 * window + 7)
            blobs = [random.randbytes(size) for size in sizes]   # small ones span several socket reads
            answers = await asyncio.gather(*(client.call(ECHO, b"big", blob, timeout_s=20) for blob in blobs))
            for blob, answer in zip(blobs, answers):
                assert hashlib.sha256(answer.payload).digest() == hashlib.sha256(blob).digest()
                if len(blob) > framing.RECEIVE_BUFFER_BYTES:
                    assert isinstance(answer.payload, bytearray)  # the socket read straight into it
            small = await client.call(ECHO, b"", b"x" * 100, timeout_s=2)    # parsing resumes after
            assert bytes(small.payload) == b"x" * 100
        finally:
            await client.close()
            await server.close()
    run(main())


def test_peer_dying_mid_frame_fails_calls_and_server_survives():
    async def main():
        echo = Echo()
        server = await echo.server()
        loop = asyncio.get_running_loop()
        try:
            # A raw peer sends half a frame and dies: the server discards it and keeps serving.
            prefix, payload = framing.encode_frame(1, ECHO, framing.REQUEST, b"m", b"p" * 1000)
            raw = socket.create_connection(("127.0.0.1", server.port))
            raw.sendall(prefix + payload[:300])
            raw.close()
            # A server dying while answering: the client's pending calls fail with ConnectionLost.
            dying = Client("127.0.0.1", server.port)
            call = asyncio.ensure_future(dying.call(HOLD, b"", b"x", timeout_s=5))
            while not echo.held:
                await asyncio.sleep(0.005)
            connection, frame = echo.held.pop()
            prefix, payload = framing.encode_frame(frame.id, HOLD, framing.RESPONSE, b"", b"y" * 5000)
            connection.transport.write(prefix + payload[:100])
            await asyncio.sleep(0.05)
            connection.abort()
            with pytest.raises(ConnectionLost):
                await call
            await dying.close()
            fresh = Client("127.0.0.1", server.port)
            assert (await fresh.call(ECHO, b"", b"ok", timeout_s=2)).payload == b"ok"
            await fresh.close()
            assert loop.is_running()
        finally:
            await server.close()
    run(main())


def test_deadline_expiry_and_late_answer_dropped():
    async def main():
        echo = Echo()
        server = await echo.server()
        client = Client("127.0.0.1", server.port)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(DeadlineExceeded):
                await client.call(HOLD, b"", b"slow", timeout_s=0.1)
            assert asyncio.get_running_loop().time() - started < 1.0
            echo.release([0])                         # the late answer is dropped, the connection lives
            assert (await client.call(ECHO, b"", b"next", timeout_s=2)).payload == b"next"
            unreachable = Client("127.0.0.1", _closed_port(), connect_timeout_s=0.2)
            with pytest.raises((ConnectionLost, DeadlineExceeded)):
                await unreachable.call(ECHO, timeout_s=0.5)
            await unreachable.close()
        finally:
            await client.close()
            await server.close()
    run(main())


@pytest.mark.parametrize("garbage", ["magic", "version", "oversized_payload", "oversized_header", "bad_header",
                                     "bad_type"])
def test_malformed_frames_close_the_connection(garbage):
    async def main():
        echo = Echo()
        server = await echo.server(max_payload_bytes=1 << 20)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            good_prefix, _ = framing.encode_frame(1, ECHO, framing.REQUEST, b"", b"")
            header = good_prefix[framing.FIXED_BYTES:]
            bad = {
                "magic": struct.pack("<HBBII", 0xBEEF, 1, 0, len(header), 0) + header,
                "version": struct.pack("<HBBII", framing.MAGIC, 9, 0, len(header), 0) + header,
                "oversized_payload": struct.pack("<HBBII", framing.MAGIC, 1, 0, len(header), 2 << 20) + header,
                "oversized_header": struct.pack("<HBBII", framing.MAGIC, 1, 0, framing.MAX_HEADER_BYTES + 1, 0),
                "bad_header": struct.pack("<HBBII", framing.MAGIC, 1, 0, 4, 0) + b"\xff\xff\xff\xff",
                "bad_type": framing.encode_frame(1, ECHO, 7)[0],
            }[garbage]
            writer.write(bad)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 2)      # EOF: the server closed on us
            assert data == b""
            writer.close()
            client = Client("127.0.0.1", server.port)              # the server still serves others
            assert (await client.call(ECHO, b"", b"fine", timeout_s=2)).payload == b"fine"
            await client.close()
        finally:
            await server.close()
    run(main())


def test_client_sees_malformed_answer_as_protocol_error():
    async def main():
        async def bad_server(reader, writer):
            await reader.read(10)
            writer.write(b"\x00" * 64)
            await writer.drain()
        listener = await asyncio.start_server(bad_server, "127.0.0.1", 0)
        client = Client("127.0.0.1", listener.sockets[0].getsockname()[1])
        try:
            with pytest.raises(ProtocolError):
                await client.call(ECHO, b"", b"x", timeout_s=2)
        finally:
            await client.close()
            listener.close()
            await listener.wait_closed()
    run(main())


def test_in_flight_bound_pauses_reading_then_resumes():
    async def main():
        echo = Echo()
        server = await echo.server(max_in_flight=8)
        client = Client("127.0.0.1", server.port)
        try:
            calls = [asyncio.ensure_future(client.call(HOLD, b"", str(i).encode(), timeout_s=5)) for i in range(20)]
            await asyncio.sleep(0.2)
            assert len(echo.held) == 8                 # the rest wait in the socket, unread
            for _ in range(3):
                echo.release(range(len(echo.held)))
                await asyncio.sleep(0.1)
            assert not echo.held
            answers = await asyncio.gather(*calls)
            assert sorted(int(a.payload) for a in answers) == list(range(20))
        finally:
            await client.close()
            await server.close()
    run(main())


def test_one_way_both_directions_corked_and_reconnect_after_restart():
    async def main():
        echo = Echo()
        server = await echo.server()
        port = server.port
        seen: list = []
        client = Client("127.0.0.1", port, handler=lambda connection, frame: seen.append(bytes(frame.payload)),
                        backoff_initial_s=0.01, backoff_max_s=0.05)
        try:
            assert client.send(NOTE, b"", b"early") is False      # not connected: dropped, reconnect begins
            await client.connect()
            connection = client.connection
            connection.cork()
            for i in range(5):
                connection.send(NOTE, b"", str(i).encode())
            connection.uncork()
            for _ in range(100):
                if len(seen) == 5:
                    break
                await asyncio.sleep(0.01)
            assert echo.notes == [b"0", b"1", b"2", b"3", b"4"]
            assert seen == [b"seen:" + str(i).encode() for i in range(5)]
            await server.close()
            await asyncio.sleep(0.05)
            assert not client.connected
            server = await Server(server.handlers).start("127.0.0.1", port)
            answer = await client.call(ECHO, b"", b"again", timeout_s=3)
            assert answer.payload == b"again"
        finally:
            await client.close()
            await server.close()
    run(main())


def test_one_turns_small_frames_leave_in_one_write_and_every_frame_keeps_its_order():
    async def main():
        echo = Echo()
        server = await echo.server()
        client = Client("127.0.0.1", server.port)
        try:
            await client.connect()
            connection = client.connection
            writes: list = []
            transport = connection.transport._transport        # under the connection's TurnWriter
            real_write, real_writelines = transport.write, transport.writelines

            class Counting:                      # the transport, its writes counted
                def __getattr__(self, name):
                    return getattr(transport, name)

                def write(self, data):
                    writes.append(len(data))
                    real_write(data)

                def writelines(self, chunks):
                    chunks = list(chunks)
                    writes.append(sum(map(len, chunks)))
                    real_writelines(chunks)

            connection.transport._transport = Counting()
            for i in range(10):                  # one loop turn: ten small one-way frames ...
                connection.send(NOTE, b"", b"s%d" % i)
            assert writes == []                  # ... nothing written yet
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert len(writes) == 1              # ... then all in one write
            writes.clear()
            large = random.randbytes(framing.LARGE_PAYLOAD_BYTES)
            connection.send(NOTE, b"", b"before-large")
            connection.send(NOTE, b"", large)    # a large frame goes at once, after what was queued
            connection.send(NOTE, b"", b"queued")
            connection.cork()
            connection.send(NOTE, b"", b"corked")
            connection.uncork()                  # what the turn queued first, then the corked ones
            connection.send(NOTE, b"", b"last")
            assert len(writes) == 2              # before-large with the large one; queued with the corked one
            notes = [b"s%d" % i for i in range(10)] + [b"before-large", large, b"queued", b"corked", b"last"]
            for _ in range(200):
                if len(echo.notes) == len(notes):
                    break
                await asyncio.sleep(0.01)
            assert echo.notes == notes
        finally:
            await client.close()
            await server.close()
    run(main())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
