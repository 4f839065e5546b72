"""A throw-away CA and a server certificate for 127.0.0.1, to test certificate verification for real.

The same maker as the rehearsal stack's TLS (rehearsal.pgtls.make_certificates), a new CA each call.
"""

from __future__ import annotations

from pathlib import Path

from rehearsal.pgtls import TlsFiles, make_certificates

__all__ = ["TlsFiles", "make_tls"]


def make_tls(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    return make_certificates(directory, host, "rollback test CA")
