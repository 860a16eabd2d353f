"""
Mutual TLS for the task protocol: the task server's TLS settings (its
certificate, and the CA its clients' certificates must chain to), and plain
words for a client's TLS failures.

Twisted's C{ssl:} server endpoint string cannot require a client
certificate, so the task server builds its L{CertificateOptions} here from
C{--tls-cert}, C{--tls-key} and C{--tls-ca}. Clients need nothing of ours:
the C{tls:} client endpoint string takes C{trustRoots=}, C{certificate=}
and C{privateKey=}, and checks the server's host name with
C{service-identity}.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from taskservice._clientbase import SSL_CLUES


def serverTLSOptions(certificate: str, privateKey: str | None, ca: str) -> Any:
    """
    Server TLS options that require a client certificate signed by one of
    the CAs in C{ca}.

    @param certificate: a PEM file: the server's certificate, then any
        intermediate certificates (its private key may follow).
    @param privateKey: a PEM file with the private key, or L{None} when it
        is in C{certificate}.
    @param ca: a PEM file with one or more CA certificates; a client
        certificate must chain to one of them.

    @return: a L{twisted.internet.ssl.CertificateOptions}.
    @raise ValueError: naming the file at fault.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        load_pem_private_key,
    )
    from OpenSSL import SSL
    from twisted.internet.ssl import (
        Certificate,
        CertificateOptions,
        trustRootFromCertificates,
    )

    certificatePEM = _read("--tls-cert", certificate)
    if privateKey is None:
        keyFile, keyPEM = f"--tls-cert {certificate}", certificatePEM
    else:
        keyFile, keyPEM = f"--tls-key {privateKey}", _read("--tls-key", privateKey)
    try:
        chain = x509.load_pem_x509_certificates(certificatePEM)
    except ValueError:
        raise ValueError(
            f"--tls-cert {certificate}: no PEM certificate in it"
        ) from None
    try:
        key = load_pem_private_key(keyPEM, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{keyFile}: no unencrypted PEM private key in it ({e})"
        ) from None
    try:
        authorities = x509.load_pem_x509_certificates(_read("--tls-ca", ca))
    except ValueError:
        raise ValueError(f"--tls-ca {ca}: no PEM certificate in it") from None
    # cryptography objects, not pyOpenSSL's X509/PKey (deprecated in
    # pyOpenSSL 26); CertificateOptions hands them to pyOpenSSL as they are.
    options = CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        trustRoot=trustRootFromCertificates(
            [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in authorities]
        ),
    )
    try:
        options.getContext()
    except SSL.Error as e:
        raise ValueError(
            f"{keyFile}: the private key does not match"
            f" the certificate in --tls-cert {certificate} ({e})"
        ) from None
    return options


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{option} {path}: {e.strerror or e}") from None


def describeTLSFailure(reason: Failure) -> str | None:
    """
    Plain words for a connection lost to a TLS failure, or L{None} if
    C{reason} is no TLS failure.
    """
    from OpenSSL import SSL
    from service_identity import VerificationError

    error = reason.value
    if isinstance(error, VerificationError):
        names = []
        for mismatch in error.errors:
            wanted = getattr(mismatch, "mismatched_id", None)
            name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None)
            if isinstance(name, bytes):
                name = name.decode("ascii", "replace")
            if name is not None:
                names.append(str(name))
        return (
            "TLS: host name mismatch: the task server's certificate is not"
            f" valid for {' or '.join(names) or 'the name connected to'}"
        )
    if isinstance(error, SSL.Error):
        detail = reason.getErrorMessage()
        for clue, words in SSL_CLUES:
            if clue in detail:
                return f"TLS: {words} ({detail})"
        return f"TLS: handshake failed ({detail})"
    return None
