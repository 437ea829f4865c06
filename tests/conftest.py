"""Shared fixtures: a real Mosquitto broker (plain and secure) and generated TLS certificates.

The fixtures live beside their helpers (tests/broker.py, tests/certs.py); importing them here
makes them available to every test file.
"""

from tests.broker import broker, secure_broker
from tests.certs import tls_certs

__all__ = ["broker", "secure_broker", "tls_certs"]
