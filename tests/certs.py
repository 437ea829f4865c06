"""Test certificates made with the openssl command line: a CA, a broker certificate, clients.

EC P-256 keys keep generation to a few milliseconds per certificate; the pytest fixture
``tls_certs`` makes one set per test session. Every certificate carries the extensions a
strict verifier wants (basic constraints, key usage, key identifiers, SANs), so a failure in a
TLS test is the failure under test, never an odd certificate.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

# Short-lived on purpose: these certificates exist for one test session.
VALID_DAYS = 7
CURVE = "prime256v1"  # P-256
DEFAULT_CLIENTS = ("box-a", "box-b", "dashboard")

# `openssl req` needs a [req] section with a distinguished_name even when -subj gives the
# name; the extension sections are named on the command line, so nothing comes from the
# system's openssl.cnf.
_REQ_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""


class CertError(RuntimeError):
    """openssl is missing or one of its commands failed (the message holds its output)."""


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its unencrypted PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertSet:
    """Everything the TLS tests need, made by :func:`make_cert_set`."""

    ca: CertPair
    server: CertPair
    clients: Mapping[str, CertPair]
    # A second CA that signed nothing here: a client trusting it must refuse the broker.
    other_ca: CertPair


def openssl_path() -> str:
    """The openssl executable, or :class:`CertError` saying how to install it."""
    found = shutil.which("openssl")
    if found is None:
        raise CertError("openssl is not installed: the TLS tests generate their certificates "
                        "with it (apt-get install openssl)")
    return found


def _openssl(args: Iterable[str], cwd: Path) -> None:
    """Run one openssl command in ``cwd``; raise with its output when it fails."""
    cmd = [openssl_path(), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30,
                          check=False)
    if proc.returncode != 0:
        raise CertError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n"
                        f"{proc.stdout}{proc.stderr}")


def _req_config(folder: Path) -> Path:
    path = folder / "req.cnf"
    if not path.exists():
        path.write_text(_REQ_CONFIG, encoding="ascii")
    return path


def _new_key_args(stem: str) -> list[str]:
    """`openssl req` arguments that make a new unencrypted P-256 key in ``stem.key``."""
    return ["-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-nodes",
            "-keyout", f"{stem}.key"]


def make_ca(folder: Path, name: str) -> CertPair:
    """Make a self-signed CA called ``name`` in ``folder`` (``<name>.crt``/``.key``)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(["req", "-x509", "-new", *_new_key_args(name), "-out", f"{name}.crt",
              "-days", str(VALID_DAYS), "-subj", f"/CN=Eyepiece test {name}",
              "-config", str(_req_config(folder)), "-extensions", "v3_ca"], folder)
    return CertPair(folder / f"{name}.crt", folder / f"{name}.key")


def _leaf_extensions(usage: str, sans: Iterable[str]) -> str:
    lines = ["[leaf]", "basicConstraints = critical, CA:FALSE",
             "keyUsage = critical, digitalSignature", f"extendedKeyUsage = {usage}",
             "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid"]
    san = ", ".join(sans)
    if san:
        lines.append(f"subjectAltName = {san}")
    return "\n".join(lines) + "\n"


def _make_leaf(folder: Path, ca: CertPair, stem: str, common_name: str, usage: str,
               sans: Iterable[str]) -> CertPair:
    """A key, a request and the CA's signature: one certificate for ``common_name``."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = folder / f"{stem}.ext"
    ext.write_text(_leaf_extensions(usage, sans), encoding="ascii")
    _openssl(["req", "-new", *_new_key_args(stem), "-out", f"{stem}.csr",
              "-subj", f"/CN={common_name}", "-config", str(_req_config(folder))], folder)
    # A random serial instead of -CAcreateserial: no serial file shared between calls.
    _openssl(["x509", "-req", "-in", f"{stem}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
              "-set_serial", str(secrets.randbits(63)), "-days", str(VALID_DAYS),
              "-out", f"{stem}.crt", "-extfile", str(ext), "-extensions", "leaf"], folder)
    return CertPair(folder / f"{stem}.crt", folder / f"{stem}.key")


def make_server_cert(folder: Path, ca: CertPair, *, hosts: Iterable[str] = ("localhost",),
                     ips: Iterable[str] = ("127.0.0.1",)) -> CertPair:
    """A broker certificate signed by ``ca``, valid for the given host names and addresses."""
    sans = [f"DNS:{h}" for h in hosts] + [f"IP:{a}" for a in ips]
    return _make_leaf(folder, ca, "server", "localhost", "serverAuth", sans)


def make_client_cert(folder: Path, ca: CertPair, name: str) -> CertPair:
    """A client certificate for ``name`` (its common name) signed by ``ca``."""
    return _make_leaf(folder, ca, f"client-{name}", name, "clientAuth", ())


def make_cert_set(folder: Path, clients: Iterable[str] = DEFAULT_CLIENTS) -> CertSet:
    """A CA, a broker certificate for localhost/127.0.0.1, client certificates, a foreign CA."""
    ca = make_ca(folder, "ca")
    return CertSet(
        ca=ca,
        server=make_server_cert(folder, ca),
        clients={name: make_client_cert(folder, ca, name) for name in clients},
        other_ca=make_ca(folder, "other-ca"),
    )


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertSet]:
    """One certificate set for the whole test session (clients: box-a, box-b, dashboard)."""
    try:
        certs = make_cert_set(tmp_path_factory.mktemp("certs"))
    except CertError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield certs
