"""tritonclient against an rtserve with TLS (docs/security.md), certificates made at run time with
`cryptography`: HTTP with `ssl=True` (the CA through `ssl_options`, with
`ssl_context_factory=gevent.ssl.create_default_context`, and with `insecure=True`) and gRPC with
`ssl=True, root_certificates=...` answer as the reference; a plaintext client is refused; with
--tls-client-ca (mutual TLS) a client without a certificate is refused on both protocols and one
with a certificate from that CA is served.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gevent.ssl
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from conftest import RtserveServer, load_expected, serve_command, start_server, stop_server

MODEL = "two_io"


@dataclass
class Pem:
    """A certificate and its key, written as PEM files."""

    cert: Path
    key: Path


class Authority:
    """A CA that issues certificates for localhost and 127.0.0.1."""

    def __init__(self, name: str, folder: Path):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.folder = folder
        self.pem = folder / f"{name}.pem"
        self.pem.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        pem = Pem(self.folder / f"{stem}.pem", self.folder / f"{stem}.key")
        pem.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        pem.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return pem


@dataclass
class Pki:
    server_ca: Authority
    client_ca: Authority
    server: Pem
    client: Pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    server_ca = Authority("server-ca", folder)
    client_ca = Authority("client-ca", folder)
    return Pki(server_ca, client_ca, server_ca.issue("server"), client_ca.issue("client"))


def _serve(pki: Pki, *extra: str) -> RtserveServer:
    cmd = serve_command("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), *extra)
    context = ssl.create_default_context(cafile=str(pki.server_ca.pem))
    if "--tls-client-ca" in extra:
        context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    return start_server(cmd, tls=context)


@pytest.fixture(scope="module")
def server(pki) -> Iterator[RtserveServer]:
    server = _serve(pki)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def mtls_server(pki) -> Iterator[RtserveServer]:
    server = _serve(pki, "--tls-client-ca", str(pki.client_ca.pem))
    yield server
    stop_server(server)


def _infer_and_check(client, module) -> None:
    expected = load_expected(MODEL)
    inputs = []
    for name, (datatype, array) in expected.inputs.items():
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(MODEL, inputs)
    for name, (_, array) in expected.outputs.items():
        np.testing.assert_allclose(result.as_numpy(name), array, rtol=1e-4, atol=1e-5)


def _https(url: str, pki: Pki, client: Pem | None = None, **options) -> httpclient.InferenceServerClient:
    ssl_options = {"ca_certs": str(pki.server_ca.pem)}
    if client is not None:
        ssl_options |= {"certfile": str(client.cert), "keyfile": str(client.key)}
    return httpclient.InferenceServerClient(
        url=url,
        ssl=True,
        ssl_options=ssl_options,
        ssl_context_factory=gevent.ssl.create_default_context,
        **options,
    )


def _grpcs(url: str, pki: Pki, client: Pem | None = None) -> grpcclient.InferenceServerClient:
    extra = {} if client is None else {"private_key": str(client.key), "certificate_chain": str(client.cert)}
    return grpcclient.InferenceServerClient(
        url=url, ssl=True, root_certificates=str(pki.server_ca.pem), **extra
    )


def test_http_over_tls(server, pki):
    client = _https(server.http_url, pki)
    assert client.is_server_live() and client.is_server_ready()
    _infer_and_check(client, httpclient)
    client.close()
    # insecure=True skips the host name check only; the name here is an IP address in the SAN.
    client = _https(server.http_url, pki, insecure=True)
    _infer_and_check(client, httpclient)
    client.close()


def test_grpc_over_tls(server, pki):
    client = _grpcs(server.grpc_url, pki)
    assert client.is_server_live() and client.is_server_ready()
    _infer_and_check(client, grpcclient)
    client.close()


def test_plaintext_clients_are_refused(server):
    client = httpclient.InferenceServerClient(url=server.http_url, network_timeout=10)
    with pytest.raises(Exception):
        client.is_server_live()
    client.close()
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    with pytest.raises(InferenceServerException):
        client.is_server_live(client_timeout=10)
    client.close()


def test_mutual_tls_needs_a_client_certificate(mtls_server, pki):
    stranger = Authority("stranger-ca", pki.server_ca.folder).issue("stranger")
    for certificate in (None, stranger):
        client = _https(mtls_server.http_url, pki, certificate)
        with pytest.raises(Exception):
            client.is_server_live()
        client.close()
        client = _grpcs(mtls_server.grpc_url, pki, certificate)
        with pytest.raises(InferenceServerException):
            client.is_server_live(client_timeout=10)
        client.close()

    client = _https(mtls_server.http_url, pki, pki.client)
    _infer_and_check(client, httpclient)
    client.close()
    client = _grpcs(mtls_server.grpc_url, pki, pki.client)
    _infer_and_check(client, grpcclient)
    client.close()
