"""TLS for every connection: the node's port, its peer connections, the client and the admin site.

A TLS directory (made by ``nodedb ca issue`` or ``nodedb ca client``) holds the cluster CA's
certificate, this party's certificate and its key. Both ends of every connection check the
other: a client (a host calling a peer, or a client calling a node) verifies the server's
certificate against the CA and against the address or name it dialled, with
service-identity; a server requires a certificate signed by the same CA (unless
``--no-client-cert``), and a host checks that a peer's certificate names the address the peer
advertises (:func:`check_peer_identity`). TLS 1.2 is the oldest version either end accepts.
"""

import datetime
import ipaddress

from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet import ssl
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from nodedb import errors
from nodedb.security.ca import CAError, load_tls_directory
from nodedb.wire.address import parse_address

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSError(Exception):
    """A TLS directory that cannot be used; the message says why."""


class TLSContext:
    """The certificates of one TLS directory, as Twisted connection options.

    :param directory: a directory with ``ca.pem``, ``cert.pem`` and ``key.pem``.
    :param now: the time to check validity at (tests); the current time by default.
    :raise TLSError: naming the file or certificate that is wrong, expired or not yet valid.
    """

    def __init__(self, directory, now=None):
        try:
            files = load_tls_directory(directory)
        except CAError as e:
            raise TLSError(str(e)) from None
        self.directory = directory
        self.ca = ssl.Certificate.loadPEM(files.ca_pem)
        self.own = ssl.PrivateCertificate.loadPEM(files.cert_pem + b"\n" + files.key_pem)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        for name, certificate in (("ca.pem", self.ca), ("cert.pem", self.own)):
            parsed = certificate.original.to_cryptography()
            if parsed.not_valid_after_utc < now:
                raise TLSError(
                    f"{directory}/{name} expired on {parsed.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: issue a new one"
                )
            if parsed.not_valid_before_utc > now:
                raise TLSError(f"{directory}/{name} is not valid before {parsed.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")

    def server_options(self, require_client_cert=True):
        """Options for a listening port: this certificate, and (by default) a peer
        certificate signed by the CA required of every connection."""
        return ssl.CertificateOptions(
            privateKey=self.own.privateKey.original,
            certificate=self.own.original,
            verify=require_client_cert,
            caCerts=[self.ca.original] if require_client_cert else None,
            requireCertificate=require_client_cert,
            raiseMinimumTo=MINIMUM_VERSION,
        )

    def client_options(self, host):
        """Options for a connection to *host* (an IP address or a name): the server must
        present a certificate signed by the CA that names *host*; this one presents its own."""
        return ssl.optionsForClientTLS(
            host,
            trustRoot=self.ca,
            clientCertificate=self.own,
            extraCertificateOptions={"raiseMinimumTo": MINIMUM_VERSION},
        )

    def wrap_client(self, host, endpoint):
        """*endpoint* (to *host*) speaking TLS."""
        return wrapClientTLS(self.client_options(host), endpoint)

    def wrap_server(self, endpoint, require_client_cert=True):
        return TLSServerEndpoint(endpoint, self.server_options(require_client_cert))


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """Any server endpoint (TCP, UNIX, the simulator's), with TLS on every connection."""

    def __init__(self, wrapped, options):
        self._wrapped = wrapped
        self._options = options

    def listen(self, factory):
        return self._wrapped.listen(TLSMemoryBIOFactory(self._options, False, factory))


def peer_certificate(transport):
    """The certificate the other end of *transport* presented (cryptography's), or None."""
    getter = getattr(transport, "getPeerCertificate", None)
    certificate = getter() if getter is not None else None
    return None if certificate is None else certificate.to_cryptography()


def check_peer_identity(transport, address):
    """Refuse a peer whose certificate does not name the host of the address it advertises
    (``host:port``): a host of this cluster cannot pass itself off as another.

    :raise ProtocolError: if the certificate is missing or names another host.
    """
    certificate = peer_certificate(transport)
    if certificate is None:
        raise errors.ProtocolError("a peer must present a certificate")
    try:
        host, _port = parse_address(address)
    except errors.NodeDBError:
        raise errors.ProtocolError(f"malformed peer address {address!r}") from None
    try:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            verify_certificate_hostname(certificate, host)
        else:
            verify_certificate_ip_address(certificate, host)
    except VerificationError:
        raise errors.ProtocolError(f"the peer's certificate does not name {host}, the address it advertises") from None
