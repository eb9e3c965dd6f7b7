"""PyInstaller runtime hook of the single-file worker: where the TLS trust roots are.

The binary carries its own libssl, whose compiled-in default paths are those of the build machine
(Debian: /usr/lib/ssl), which other distributions do not have. Go's crypto/x509 instead looks for
the system bundle in a list of well-known places; this hook does the same before any TLS code runs
and points OpenSSL at what it finds through SSL_CERT_FILE / SSL_CERT_DIR (which Python's ssl module,
OpenSSL and the executors all honour). A host with no bundle at all (a bare router image) gets the
Mozilla bundle shipped inside the binary (certifi's cacert.pem). Variables the user set are left alone.
"""

import os
import sys

# Go 1.22 crypto/x509 root_linux.go, in its order.
CERT_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian/Ubuntu/Gentoo etc.
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora/RHEL 6
    "/etc/ssl/ca-bundle.pem",  # OpenSUSE
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS/RHEL 7
    "/etc/ssl/cert.pem",  # Alpine Linux
)
CERT_DIRS = (
    "/etc/ssl/certs",  # SLES10/SLES11
    "/etc/pki/tls/certs",  # Fedora/RHEL
)


def choose_roots(environ, files=CERT_FILES, dirs=CERT_DIRS, bundled=None):
    """The SSL_CERT_FILE / SSL_CERT_DIR values to set (a dict, empty when nothing is to change)."""
    if environ.get("SSL_CERT_FILE") or environ.get("SSL_CERT_DIR"):
        return {}
    chosen = {}
    cafile = next((f for f in files if os.path.isfile(f) and os.path.getsize(f) > 0), None)
    capath = next((d for d in dirs if os.path.isdir(d)), None)
    if cafile:
        chosen["SSL_CERT_FILE"] = cafile
    if capath:
        chosen["SSL_CERT_DIR"] = capath
    if not cafile and bundled and os.path.isfile(bundled):
        chosen["SSL_CERT_FILE"] = bundled
    return chosen


def _install():
    bundled = os.path.join(getattr(sys, "_MEIPASS", ""), "certifi", "cacert.pem")
    os.environ.update(choose_roots(os.environ, bundled=bundled))


if getattr(sys, "frozen", False):
    _install()
