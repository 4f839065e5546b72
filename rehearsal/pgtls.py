"""TLS for the rehearsal's PostgreSQL: a test CA, a server certificate, and a TLS front on its own port.

The PostgreSQL 16 of the `pgserver` wheel is built without OpenSSL (`pg_config --configure` has no
`--with-openssl`), so it cannot serve TLS itself. This front speaks PostgreSQL's own TLS negotiation
(protocol docs, "SSL Session Encryption", https://www.postgresql.org/docs/16/protocol-flow.html#PROTOCOL-FLOW-SSL):
the client sends an SSLRequest (length 8, code 80877103), the server answers `S` and both run a TLS
handshake, after which the ordinary protocol flows inside TLS. The front answers `S`, completes the
handshake with a certificate signed by the stack's test CA, and relays the decrypted stream to the
real server on its plain port; a GSSENCRequest is answered `N` (no GSSAPI encryption), and a client
that starts without TLS (sslmode=disable) or sends a CancelRequest is relayed as it is, as a server
with a `host` line in pg_hba.conf would accept it. So libpq on the client side does the real thing:
negotiation, handshake, certificate chain and host name checks of sslmode=verify-full.
(libpq 17's direct TLS negotiation, `sslnegotiation=direct`, is not offered.)

The CA's private key is never written: it signs the server certificate in memory and is dropped,
so nothing on disk can issue another certificate. The server key is 0600 in the cluster's folder.

    python -m rehearsal.pgtls --listen 127.0.0.1:55433 --backend 127.0.0.1:55432 --cert server.pem --key server.key
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import signal
import ssl
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


@dataclass
class TlsFiles:
    ca_cert: Path  # what a client trusts (sslrootcert)
    server_cert: Path
    server_key: Path


def make_certificates(directory: Path, host: str = "127.0.0.1", common_name: str = "rehearsal test CA") -> TlsFiles:
    """A new test CA (key discarded) and a server certificate for `host` (an IP SAN), valid 30 days."""
    from cryptography import x509  # noqa: PLC0415 - only the stack's start needs it
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(name(common_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    fd = os.open(files.server_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


# -- the front -----------------------------------------------------------------------------------------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext, backend: tuple[str, int]
) -> None:
    head = b""
    try:
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!II", head)
            if length == 8 and code == GSSENC_REQUEST:
                writer.write(b"N")  # no GSSAPI encryption here: the client goes on with an SSLRequest or in clear
                await writer.drain()
                continue
            if length == 8 and code == SSL_REQUEST:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(context)
                head = b""
            break
        up_reader, up_writer = await asyncio.open_connection(*backend)
    except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
        with contextlib.suppress(Exception):
            writer.close()
        return
    up_writer.write(head)
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def serve(listen: tuple[str, int], backend: tuple[str, int], cert: Path, key: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    server = await asyncio.start_server(lambda r, w: _serve_one(r, w, context, backend), *listen, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"pgtls: TLS on {listen[0]}:{listen[1]} -> PostgreSQL {backend[0]}:{backend[1]}", flush=True)
    async with server:
        await stop.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rehearsal.pgtls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port to serve TLS on")
    parser.add_argument("--backend", required=True, help="host:port of PostgreSQL (plain)")
    parser.add_argument("--cert", required=True, type=Path)
    parser.add_argument("--key", required=True, type=Path)
    args = parser.parse_args(argv)
    asyncio.run(serve(_address(args.listen), _address(args.backend), args.cert, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
