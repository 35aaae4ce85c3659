"""``--web.config.file``: TLS and basic authentication for the metrics endpoint.

The file has the YAML layout of the Prometheus exporter toolkit
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md),
which node_exporter and other exporters read with the same option. netmon
reads this subset:

    tls_server_config:
      cert_file: /etc/netmon/cert.pem
      key_file: /etc/netmon/key.pem
      min_version: TLS12          # optional: TLS10, TLS11, TLS12 or TLS13
    basic_auth_users:
      prometheus: $2y$10$...     # bcrypt hash, e.g. from `htpasswd -nBC 10 ""`

Other keys of that format (client certificates, cipher suites, HTTP
headers) are rejected with an error, so a file written for another exporter
never appears to be applied when it is not. Unlike the exporter toolkit,
which reads the file on every request, netmon reads it once at start.
"""

import base64
import binascii
import hashlib
import os
import ssl
import threading

import yaml

TOP_LEVEL_KEYS = ("tls_server_config", "basic_auth_users")
TLS_KEYS = ("cert_file", "key_file", "min_version")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Successful checks are cached, because a bcrypt check costs tens of
# milliseconds by design and Prometheus sends the same credentials on every
# scrape. The cache stores only SHA-256 digests of the credentials.
AUTH_CACHE_SIZE = 64


class WebConfigError(Exception):
    """An invalid --web.config.file, with a message that names the file and the key."""


class WebConfig:
    """The parsed file: an optional server SSLContext and an optional user table."""

    def __init__(self, path, ssl_context=None, users=None):
        self.path = path
        self.ssl_context = ssl_context
        self.users = users or {}
        self._cache = set()
        self._cache_lock = threading.Lock()
        # Unknown users are checked against this hash, so that the response
        # time does not tell which user names exist.
        self._dummy_hash = None

    @property
    def tls(self):
        return self.ssl_context is not None

    @property
    def requires_auth(self):
        return bool(self.users)

    def authorized(self, header):
        """Return True when the Authorization header value has a listed user and its password."""
        if not self.users:
            return True
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        digest = hashlib.sha256(user + b"\0" + password).digest()
        with self._cache_lock:
            if digest in self._cache:
                return True
        import bcrypt

        hashed = self.users.get(user)
        if hashed is None:
            if self._dummy_hash is None:
                self._dummy_hash = bcrypt.hashpw(b"netmon", bcrypt.gensalt(rounds=10))
            bcrypt.checkpw(password, self._dummy_hash)
            return False
        if not bcrypt.checkpw(password, hashed):
            return False
        with self._cache_lock:
            if len(self._cache) >= AUTH_CACHE_SIZE:
                self._cache.clear()
            self._cache.add(digest)
        return True


def _parse_basic(header):
    """Return (user, password) as bytes from a Basic Authorization value, or None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, separator, password = decoded.partition(b":")
    if not separator:
        return None
    return user, password


def load_web_config(path):
    """Read and check ``path``; return a WebConfig or raise WebConfigError."""
    try:
        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file)
    except OSError as error:
        raise WebConfigError(f"reading --web.config.file {path} failed: {error.strerror}") from None
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())
        raise WebConfigError(f"--web.config.file {path} is not valid YAML: {detail}") from None
    if document is None:
        return WebConfig(path)
    if not isinstance(document, dict):
        raise WebConfigError(f"--web.config.file {path}: expected a mapping at the top level, found {_kind(document)}")
    _reject_unknown(path, document, TOP_LEVEL_KEYS, "")

    context = None
    tls = document.get("tls_server_config")
    if tls is not None:
        context = _ssl_context(path, tls)
    users = _users(path, document.get("basic_auth_users"))
    return WebConfig(path, context, users)


def _ssl_context(path, tls):
    if not isinstance(tls, dict):
        raise WebConfigError(f"--web.config.file {path}: tls_server_config must be a mapping, found {_kind(tls)}")
    _reject_unknown(path, tls, TLS_KEYS, "tls_server_config.")
    cert_file, key_file = tls.get("cert_file"), tls.get("key_file")
    if not cert_file or not key_file:
        raise WebConfigError(f"--web.config.file {path}: tls_server_config needs both cert_file and key_file")
    # The exporter toolkit's default minimum is TLS 1.2 too.
    min_version = tls.get("min_version", "TLS12")
    if not isinstance(min_version, str) or min_version not in TLS_VERSIONS:
        raise WebConfigError(
            f"--web.config.file {path}: tls_server_config.min_version {min_version!r} is invalid; "
            f"use one of {', '.join(TLS_VERSIONS)}"
        )

    # Relative paths are relative to the config file, as in the exporter toolkit.
    base = os.path.dirname(os.path.abspath(path))
    cert_file = os.path.join(base, str(cert_file))
    key_file = os.path.join(base, str(key_file))
    for key, file_path in (("cert_file", cert_file), ("key_file", key_file)):
        if not os.path.isfile(file_path):
            raise WebConfigError(f"--web.config.file {path}: tls_server_config.{key} {file_path} not found")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[min_version]
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise WebConfigError(
            f"--web.config.file {path}: loading cert_file {cert_file} and key_file {key_file} failed: "
            f"{getattr(error, 'reason', None) or error}"
        ) from None
    return context


def _users(path, users):
    if users is None:
        return {}
    if not isinstance(users, dict):
        raise WebConfigError(f"--web.config.file {path}: basic_auth_users must be a mapping, found {_kind(users)}")
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        raise WebConfigError(
            f"--web.config.file {path}: basic_auth_users needs the bcrypt package: pip install bcrypt"
        ) from None
    table = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
            raise WebConfigError(
                f"--web.config.file {path}: basic_auth_users.{user} is not a bcrypt hash "
                "(expected 60 characters starting with $2a$, $2b$ or $2y$, e.g. from `htpasswd -nBC 10 \"\"`)"
            )
        table[str(user).encode()] = hashed.encode()
    return table


def _reject_unknown(path, mapping, known, prefix):
    for key in mapping:
        if key not in known:
            raise WebConfigError(
                f"--web.config.file {path}: {prefix}{key} is not supported; netmon reads "
                + ", ".join(prefix + name for name in known)
            )


def _kind(value):
    return type(value).__name__
