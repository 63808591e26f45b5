"""The cluster's certificate authority: files on disk, made with the ``cryptography`` library.

A CA directory ``DIR`` (made by :func:`init_ca`, ``nodedb ca init DIR``) holds::

    DIR/ca.pem                  the CA certificate (self-signed), mode 0644
    DIR/ca-key.pem              the CA private key, mode 0600: keep it off the hosts
    DIR/hosts/NAME/             one TLS directory per host (issue_host, ``nodedb ca issue``)
    DIR/clients/NAME/           one TLS directory per client (issue_client, ``nodedb ca client``)

A TLS directory holds ``cert.pem`` (0644), ``key.pem`` (0600) and a copy of the CA certificate
``ca.pem`` (0644): it is complete, so it is what gets copied to a host (or a client machine) and
passed as ``--tls``. :func:`load_tls_directory` reads and checks one.

Keys are ECDSA on the NIST P-256 curve, signed with SHA-256: generating and signing are fast,
every TLS 1.2 and 1.3 implementation supports them, and a P-256 key is as strong as a 3072-bit
RSA one. Private keys are written without a passphrase; the file mode is their protection.

Files are written atomically (a temporary file in the same directory, then a rename), with
their mode set before any byte is written; directories this module creates are mode 0700.
An existing key is never overwritten silently: :func:`init_ca` always refuses, and
:func:`issue_host` / :func:`issue_client` refuse unless ``force=True``. Re-issuing with
``force=True`` makes a new key and certificate and replaces the old ones: that is how a
certificate is rotated before it expires (the host reads its files when it starts, so it
must be restarted to use them).

Validity: a certificate is valid from one hour before ``now`` (so that a host whose clock is a
little behind the CA machine's accepts it) until ``now + days``, but a host or client
certificate never outlives the CA that signed it. ``now`` defaults to the current time in UTC;
tests pass another to make certificates that are expired or not yet valid.
"""

import dataclasses
import datetime
import ipaddress
import os
import re
import secrets
import tempfile

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CERT = "cert.pem"
KEY = "key.pem"
HOSTS = "hosts"
CLIENTS = "clients"

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

BACKDATE = datetime.timedelta(hours=1)
MAX_DAYS = 36500
MAX_CN = 64

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


class CAError(Exception):
    """A CA or TLS directory that cannot be made, used or read; the message says why."""


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """The three files of a TLS directory, read and checked by :func:`load_tls_directory`."""

    directory: str
    ca_path: str
    cert_path: str
    key_path: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


# --- making a CA and certificates ----------------------------------------------------------


def init_ca(directory, days=3650, now=None):
    """Make a new cluster CA in *directory* (created, mode 0700, if missing).

    Writes ``ca.pem``, a self-signed CA certificate (basicConstraints CA:true, critical;
    keyUsage keyCertSign and cRLSign; subject CN "nodedb cluster CA <random hex>") and
    ``ca-key.pem``, its private key.

    :param days: how long the CA certificate is valid.
    :param now: a datetime to date it from (tests); the current UTC time by default.
    :return: the paths written, the certificate first.
    :raise CAError: if either file exists already, or the directory cannot be written.
    """
    now = _utc(now)
    _check_days(days)
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    for path in (cert_path, key_path):
        if os.path.lexists(path):
            raise CAError(f"{path} exists already: {directory} holds a CA; refusing to replace it")
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodedb"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"nodedb cluster CA {secrets.token_hex(8)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _make_dirs(directory)
    _write(key_path, _key_pem(key), KEY_MODE, replace=False)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE, replace=False)
    return [cert_path, key_path]


def issue_host(directory, name, ips=(), days=825, now=None, force=False):
    """Issue a certificate and key for the host *name*, signed by the CA in *directory*.

    Writes ``DIR/hosts/NAME/cert.pem`` (subject CN=NAME, or an empty subject for a name longer
    than the 64 characters a CN holds; subjectAltName DNSName(NAME), or
    IPAddress(NAME) if NAME is an IP address, plus IPAddress(ip) for each of *ips*;
    extendedKeyUsage serverAuth and clientAuth, since a host serves its peers and calls them),
    ``key.pem`` and ``ca.pem``, a copy of the CA certificate: ``DIR/hosts/NAME`` is the
    directory to copy to that host and pass as ``--tls``.

    :param name: the host's DNS name or IP address: 1 to 253 characters of letters, digits,
        dots and dashes, not starting with a dot or a dash (or any IP address).
    :param ips: more IP addresses the host is reached at (its advertised address).
    :param force: replace an existing certificate and key with new ones (rotation).
    :return: the paths written: key, certificate, CA certificate.
    :raise CAError: for a bad name or address, a missing or broken CA, or existing files
        without *force*.
    """
    name_ip = validate_name(name)
    addresses = [validate_ip(ip) for ip in ips]
    sans = [x509.IPAddress(name_ip) if name_ip is not None else x509.DNSName(name)]
    for address in addresses:
        if address != name_ip and x509.IPAddress(address) not in sans:
            sans.append(x509.IPAddress(address))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(directory, HOSTS, name, sans, usages, days, now, force)


def issue_client(directory, name, days=825, now=None, force=False):
    """Issue a client certificate and key for *name*, signed by the CA in *directory*.

    Writes ``DIR/clients/NAME/{key.pem,cert.pem,ca.pem}``: subject CN=NAME,
    extendedKeyUsage clientAuth only, no subjectAltName.

    :param name: as for :func:`issue_host` (it names a directory too), at most 64 characters.
    :return: the paths written: key, certificate, CA certificate.
    :raise CAError: as for :func:`issue_host`.
    """
    validate_name(name)
    if len(name) > MAX_CN:
        raise CAError(f"bad client name {name!r}: at most {MAX_CN} characters (it is the certificate's common name)")
    return _issue(directory, CLIENTS, name, [], [ExtendedKeyUsageOID.CLIENT_AUTH], days, now, force)


def _issue(directory, kind, name, sans, usages, days, now, force):
    now = _utc(now)
    _check_days(days)
    ca_cert, ca_key, ca_pem = _load_ca(directory)
    if ca_cert.not_valid_after_utc <= now:
        raise CAError(
            f"the CA in {directory} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: make a new CA"
        )
    target = os.path.join(directory, kind, name)
    paths = [os.path.join(target, KEY), os.path.join(target, CERT), os.path.join(target, CA_CERT)]
    if not force:
        for path in paths[:2]:
            if os.path.lexists(path):
                raise CAError(f"{path} exists already: pass --force to re-issue it with a new key")
    # A common name holds at most 64 characters; a longer host name is only in the
    # subjectAltName, which is then critical, as RFC 5280 wants for an empty subject.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if len(name) <= MAX_CN else [])
    key = _new_key()
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    except x509.ExtensionNotFound:  # a CA certificate made by another tool
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
    cert = builder.sign(ca_key, hashes.SHA256())
    _make_dirs(target)
    _write(paths[0], _key_pem(key), KEY_MODE, replace=force)
    _write(paths[1], cert.public_bytes(serialization.Encoding.PEM), CERT_MODE, replace=force)
    _write(paths[2], ca_pem, CERT_MODE, replace=True)
    return paths


def certificate_expiry(path):
    """The ``not_valid_after`` time (UTC) of the certificate in the PEM file *path*."""
    return _parse_cert(path, _read(path)).not_valid_after_utc


def validate_name(name):
    """Check a host or client name.

    :return: the name as an :mod:`ipaddress` address if it is one, else None.
    :raise CAError: saying what a name may hold.
    """
    if not isinstance(name, str):
        raise CAError(f"a name must be a string, not {name!r}")
    if "%" not in name:
        try:
            return ipaddress.ip_address(name)
        except ValueError:
            pass
    if not _NAME.fullmatch(name) or ".." in name:
        raise CAError(
            f"bad name {name!r}: use 1 to 253 letters, digits, dots and dashes, "
            "not starting with a dot or a dash (or an IP address)"
        )
    return None


def validate_ip(ip):
    """:return: *ip* as an :mod:`ipaddress` address. :raise CAError: if it is not one."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise CAError(f"bad IP address {ip!r}") from None
    if getattr(address, "scope_id", None):
        raise CAError(f"bad IP address {ip!r}: give it without a %scope")
    return address


# --- reading a TLS directory --------------------------------------------------------------


def load_tls_directory(path):
    """Read and check the TLS directory *path*: ``ca.pem``, ``cert.pem`` and ``key.pem``.

    Checks that each file is there and parses, that the key is the certificate's key, and that
    the certificate is signed by the CA in ``ca.pem``. Validity dates are not checked here.

    :return: a :class:`TLSFiles`.
    :raise CAError: naming the file that is missing, unreadable or wrong.
    """
    if not os.path.isdir(path):
        raise CAError(f"TLS directory {path} does not exist or is not a directory")
    ca_path, cert_path, key_path = (os.path.join(path, n) for n in (CA_CERT, CERT, KEY))
    ca_pem, cert_pem, key_pem = _read(ca_path), _read(cert_path), _read(key_path)
    ca_cert = _parse_cert(ca_path, ca_pem)
    cert = _parse_cert(cert_path, cert_pem)
    key = _parse_key(key_path, key_pem)
    if not _same_public_key(key, cert):
        raise CAError(f"{key_path} is not the key of {cert_path}: re-issue the certificate")
    if not _signed_by(cert, ca_cert):
        raise CAError(
            f"{cert_path} is not signed by the CA in {ca_path}: issue it from that CA (nodedb ca issue)"
        )
    return TLSFiles(path, ca_path, cert_path, key_path, ca_pem, cert_pem, key_pem)


# --- helpers --------------------------------------------------------------------------------


def _utc(now):
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc)


def _check_days(days):
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise CAError(f"the number of days must be a whole number from 1 to {MAX_DAYS}, not {days!r}")


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(digital_signature=False, key_cert_sign=False, crl_sign=False):
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(directory):
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    if not os.path.exists(cert_path):
        raise CAError(f"no CA in {directory} ({cert_path} is missing): run 'nodedb ca init {directory}' first")
    ca_pem = _read(cert_path)
    cert = _parse_cert(cert_path, ca_pem)
    key = _parse_key(key_path, _read(key_path))
    if not _same_public_key(key, cert):
        raise CAError(f"{key_path} is not the key of {cert_path}")
    return cert, key, ca_pem


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CAError(f"{path} is missing") from None
    except OSError as e:
        raise CAError(f"cannot read {path}: {e.strerror}") from None


def _parse_cert(path, pem):
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CAError(f"{path} does not hold a PEM certificate") from None


def _parse_key(path, pem):
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise CAError(f"{path} does not hold an unencrypted PEM private key") from None
    return key


def _same_public_key(key, cert):
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _signed_by(cert, ca_cert):
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _make_dirs(path):
    """Create *path* and any missing parents, each mode 0700; existing ones are left alone."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        if os.path.lexists(path):
            raise CAError(f"{path} exists and is not a directory")
        missing.append(path)
        path = os.path.dirname(path)
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
            os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass
        except OSError as e:
            raise CAError(f"cannot create {path}: {e.strerror}") from None


def _write(path, data, mode, replace):
    """Write *data* to *path* atomically with *mode*; refuse to replace it unless *replace*."""
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise CAError(f"cannot write in {directory}: {e.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists, unlike rename
            except FileExistsError:
                raise CAError(f"{path} exists already; refusing to replace it") from None
            except OSError:  # a file system without hard links
                if os.path.lexists(path):
                    raise CAError(f"{path} exists already; refusing to replace it") from None
                os.rename(tmp, path)
            else:
                os.unlink(tmp)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise CAError(f"cannot write {path}: {e.strerror}") from None
        raise
    _fsync_dir(directory)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
