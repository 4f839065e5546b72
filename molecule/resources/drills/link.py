"""`python -m drills.link --listen PORT --upstream HOST:PORT`: a plain TCP forwarder, an instance's network link
to its flag system. The stale-instance drill points a third app instance's SDK at it, then stops it (the
instance loses its connection to Unleash and keeps serving its cached flag) and starts it again (fixed)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


async def _serve(listen: int, host: str, port: int) -> None:
    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drills.link", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(_serve(args.listen, host, int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
