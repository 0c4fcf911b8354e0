"""What the gRPC Python transport alone costs per ProcessImage request, with no image work.

A bare grpc.aio server (subprocess) parses each ProcessImageRequest, reads its source bytes and
answers with a 100 KB reply; bench/throughput.py's client drives it at concurrency 2 with the
benchmark corpus's requests. It prints the server's and the client's CPU per request, with and
without imagesvc.memory's malloc policy (applied to both processes alike).

    .venv/bin/python bench/grpc_transport.py [--n 1500] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import throughput as tp  # bench/ is sys.path[0] when run as a script

REPLY_BYTES = 100_000


def role_server(port: int, malloc_tuning: bool) -> None:
    import grpc

    from imagesvc import memory
    from imagesvc.v1 import image_service_pb2 as pb

    if malloc_tuning:
        memory.tune_malloc()
    reply = pb.ProcessImageResponse(data=os.urandom(REPLY_BYTES), width=1, height=1)

    async def process(request, context):
        if not request.source.data:
            raise RuntimeError("empty source")
        return reply

    async def main() -> None:
        options = [
            ("grpc.max_receive_message_length", tp.MAX_MESSAGE),
            ("grpc.max_send_message_length", tp.MAX_MESSAGE),
        ]
        server = grpc.aio.server(options=options)
        handler = grpc.method_handlers_generic_handler(
            "imagesvc.v1.ImageService",
            {
                "ProcessImage": grpc.unary_unary_rpc_method_handler(
                    process,
                    request_deserializer=pb.ProcessImageRequest.FromString,
                    response_serializer=pb.ProcessImageResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def wait_listening(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError("server not listening")


def measure(args, malloc_tuning: bool) -> dict:
    port = tp.free_port()
    flag = "on" if malloc_tuning else "off"
    server = subprocess.Popen(
        [sys.executable, __file__, "--role", "server", "--port", str(port), "--malloc", flag],
        cwd=tp.REPO,
    )
    client = None
    try:
        wait_listening(port, server)
        client = tp.Child(
            [
                "--role",
                "client",
                "--corpus",
                str(args.corpus),
                "--port",
                str(port),
                "--concurrency",
                str(args.concurrency),
                "--warmup",
                "40",
                "--max-seconds",
                "120",
                "--malloc-tuning",
                flag,
            ],
            "client",
        )
        client.expect("READY", 120)
        cpu0 = tp.proc_cpu_s(server.pid)
        client.go(args.n, 0)
        result = client.result(180)
        server_cpu = tp.proc_cpu_s(server.pid) - cpu0
        client.close()
    finally:
        if client is not None and client.proc.poll() is None:
            client.proc.kill()
        server.kill()
        server.wait()
    done = max(result["done"], 1)
    return {
        "server_ms": server_cpu / done * 1e3,
        "client_ms": result["cpu_s"] / done * 1e3,
        "rps": done / (result["t_end"] - result["t_start"]),
        "errors": result["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=tp.BENCH_DIR / "corpus")
    parser.add_argument("--role", choices=("server",), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--malloc", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        role_server(args.port, args.malloc == "on")
        return 0
    if not args.corpus.exists():
        from corpus import build as build_corpus

        build_corpus(args.corpus, log=print)
    files = tp.corpus_files(args.corpus)
    size = sum(p.stat().st_size for p in files) / len(files)
    print(f"requests: {len(files)} corpus files, {size / 1e6:.2f} MB each on average")
    for repeat in range(args.repeats):
        for tuning in (False, True):
            r = measure(args, tuning)
            print(
                f"repeat {repeat + 1}  malloc policy {'on ' if tuning else 'off'}  "
                f"server {r['server_ms']:.2f} ms/req  client {r['client_ms']:.2f} ms/req  "
                f"{r['rps']:.0f} req/s  errors {r['errors']}",
                flush=True,
            )
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
