"""The HTTP server comparison DESIGN §11 asks for: the same minimal S3-like PUT/GET
handler served by each candidate, driven by the same load generator as
bench/s3_bench.py (bench/loadgen.py), with the server's CPU per op and per MiB.

    .venv/bin/python -m bench.http_candidates                    # all candidates, ~1.5 min
    .venv/bin/python -m bench.http_candidates -c uvicorn -w put4k16,get4k16 -d 8

Candidates (each on uvloop, one process, access logs off):
  uvicorn      uvicorn + httptools, a bare ASGI app (what frontend/server.py runs)
  aiohttp      aiohttp.web (Application, one catch-all route, StreamResponse)
  aiohttp-ll   aiohttp's low-level server (aiohttp.web.Server, no router/app)

The handler (identical logic in each):
  PUT  read the body as it arrives; gather it into pieces of >= 1 MiB; MD5 each
       piece in order on a worker thread (one hop in flight, so MD5 stays
       sequential) when the body is over 64 KiB, on the loop otherwise; keep the
       pieces in a dict under the path; answer 200 with ETag = "<md5 hex>".
  GET  the stored pieces, with Content-Length, written piece by piece; 404 if absent.
No SigV4 check, no metadata: this measures the HTTP layer and the byte path only.
The generator still sends its signed headers, so request sizes match s3_bench.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
from pathlib import Path

PIECE_BYTES = 1024 * 1024
INLINE_HASH_MAX = 64 * 1024
CANDIDATES = ("uvicorn", "aiohttp", "aiohttp-ll")
WORKLOADS = ("put4k16", "get4k16", "put64m", "get64m")


# ------------------------------------------------------------------ the shared handler logic


class Store:
    def __init__(self) -> None:
        self.objects: dict[str, list[bytes]] = {}

    async def put(self, path: str, chunks, length: int | None) -> str:
        """Consume `chunks` (async iterator of bytes); return the MD5 hex."""
        md5 = hashlib.md5()
        offload = length is None or length > INLINE_HASH_MAX
        pieces: list[bytes] = []
        pending: list[bytes] = []
        pending_bytes = 0
        hashing = None
        async for chunk in chunks:
            if not chunk:
                continue
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= PIECE_BYTES:
                piece = pending[0] if len(pending) == 1 else b"".join(pending)
                pending, pending_bytes = [], 0
                pieces.append(piece)
                if offload:
                    if hashing is not None:
                        await hashing
                    hashing = asyncio.ensure_future(asyncio.to_thread(md5.update, piece))
                else:
                    md5.update(piece)
        if pending:
            piece = pending[0] if len(pending) == 1 else b"".join(pending)
            pieces.append(piece)
            if hashing is not None:
                await hashing
                hashing = None
            md5.update(piece)
        if hashing is not None:
            await hashing
        self.objects[path] = pieces
        return md5.hexdigest()

    def get(self, path: str) -> list[bytes] | None:
        return self.objects.get(path)


# ------------------------------------------------------------------ uvicorn + httptools, bare ASGI


def uvicorn_app(store: Store):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        if method == "PUT":
            length = None
            for name, value in scope["headers"]:
                if name == b"content-length":
                    length = int(value)

            async def chunks():
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ConnectionError("client went away")
                    yield message.get("body", b"")
                    if not message.get("more_body", False):
                        return

            etag = await store.put(path, chunks(), length)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"etag", f'"{etag}"'.encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        pieces = store.get(path)
        if pieces is None:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        size = sum(len(piece) for piece in pieces)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(size).encode())]})
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def serve_uvicorn(port: int) -> None:
    import uvicorn

    config = uvicorn.Config(uvicorn_app(Store()), host="127.0.0.1", port=port, loop="none", http="httptools",
                            lifespan="off", access_log=False, log_level="warning", server_header=False)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    bound = next(iter(server.servers[0].sockets)).getsockname()[1]
    _ready(bound)
    await task


# ------------------------------------------------------------------ aiohttp


def aiohttp_handler(store: Store):
    from aiohttp import web

    async def handler(request):
        if request.method == "PUT":
            etag = await store.put(request.path, request.content.iter_any(), request.content_length)
            return web.Response(status=200, headers={"ETag": f'"{etag}"'})
        pieces = store.get(request.path)
        if pieces is None:
            return web.Response(status=404)
        if len(pieces) == 1:
            return web.Response(body=pieces[0])
        response = web.StreamResponse(status=200)
        response.content_length = sum(len(piece) for piece in pieces)
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
        await response.write_eof()
        return response

    return handler


async def serve_aiohttp(port: int, low_level: bool) -> None:
    from aiohttp import web

    handler = aiohttp_handler(Store())
    if low_level:
        server = web.Server(handler, access_log=None)
        listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
        _ready(listener.sockets[0].getsockname()[1])
        await asyncio.Event().wait()
        return
    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    _ready(site._server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def _ready(port: int) -> None:
    # The same lines `cairn dev` prints, so bench.s3_bench.start_server can read them.
    print(f"endpoint: http://127.0.0.1:{port}")
    print("access key: candidate")
    print("secret key: candidate")
    print("region: us-east-1", flush=True)


def serve(name: str, port: int) -> None:
    import uvloop

    try:
        if name == "uvicorn":
            uvloop.run(serve_uvicorn(port))
        else:
            uvloop.run(serve_aiohttp(port, low_level=name == "aiohttp-ll"))
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------ the comparison


def compare(arguments: argparse.Namespace) -> int:
    import uvloop

    from bench import s3_bench
    from bench.loadgen import format_table, machine_line

    print(machine_line(), flush=True)
    rows = []
    failed = 0
    for candidate in arguments.candidates:
        with tempfile.TemporaryDirectory(prefix="cairn-http-") as data_dir:
            command = [sys.executable, "-m", "bench.http_candidates", "--serve", candidate, "--port", "0"]
            server = s3_bench.start_server(command, Path(data_dir))
            options = argparse.Namespace(
                workloads=arguments.workloads, duration=arguments.duration, large_duration=arguments.large_duration,
                warmup=arguments.warmup, list_concurrency=1, profile=None, profile_top=0)
            print(f"== {candidate} (pid {server.pid})", flush=True)
            try:
                results = uvloop.run(s3_bench.run(options, server))
            finally:
                server.stop()
            for result in results:
                row = result.as_dict()
                row["name"] = f"{candidate}:{row['name']}"
                rows.append(row)
                failed += row["errors"]
    print()
    print(format_table(rows))
    print("srv µs/u = server CPU-µs per op; ms/MiB = CPU-ms per MiB of payload; other = the rest of the box")
    print("\nper workload, server CPU per op (µs) | per MiB (ms), lower is better:")
    by_workload: dict[str, list[str]] = {}
    for row in rows:
        candidate, workload = row["name"].split(":")
        cost = (f"{row['server_cpu_ms_per_mib']:.2f} ms/MiB" if workload.endswith("64m")
                else f"{row['server_cpu_us_per_unit']:.0f} µs/op")
        rate = f"{row['mib_per_s']:.0f} MiB/s" if workload.endswith("64m") else f"{row['units_per_s']:,.0f}/s"
        by_workload.setdefault(workload, []).append(f"{candidate} {rate} ({cost})")
    for workload, entries in by_workload.items():
        print(f"  {workload:<9} " + "; ".join(entries))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_candidates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--candidates", default=",".join(CANDIDATES),
                        help=f"comma-separated, from {', '.join(CANDIDATES)} (default: all)")
    parser.add_argument("-w", "--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated s3_bench workload names (default: {','.join(WORKLOADS)})")
    parser.add_argument("-d", "--duration", type=float, default=4.0, help="seconds per small-object workload")
    parser.add_argument("--large-duration", type=float, default=5.0, help="seconds per 64 MiB workload")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--serve", choices=CANDIDATES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve:
        serve(arguments.serve, arguments.port)
        return 0
    from bench.s3_bench import parse_workloads

    arguments.candidates = [name.strip() for name in arguments.candidates.split(",") if name.strip()]
    unknown = set(arguments.candidates) - set(CANDIDATES)
    if unknown:
        parser.error(f"unknown candidates {sorted(unknown)}")
    arguments.workloads = parse_workloads(arguments.workloads)
    if "list" in arguments.workloads:
        parser.error("the candidates serve PUT and GET only")
    return compare(arguments)


if __name__ == "__main__":
    sys.exit(main())
