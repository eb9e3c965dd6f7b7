"""The single-file binary's runtime hook that finds the TLS trust roots (freeze/rth_ca_roots.py)."""

from __future__ import annotations

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("rth_ca_roots", ROOT / "freeze" / "rth_ca_roots.py")
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)  # not frozen: only defines choose_roots


def test_user_settings_are_left_alone(tmp_path):
    bundle = tmp_path / "ca.crt"
    bundle.write_text("x")
    assert hook.choose_roots({"SSL_CERT_FILE": "/mine.pem"}, files=[str(bundle)]) == {}
    assert hook.choose_roots({"SSL_CERT_DIR": "/mine"}, files=[str(bundle)]) == {}


def test_first_system_bundle_and_directory_in_gos_order(tmp_path):
    empty, first, second = tmp_path / "empty.crt", tmp_path / "a.crt", tmp_path / "b.crt"
    empty.write_text("")
    first.write_text("x")
    second.write_text("x")
    certs = tmp_path / "certs"
    certs.mkdir()
    chosen = hook.choose_roots({}, files=[str(tmp_path / "missing.crt"), str(empty), str(first), str(second)],
                               dirs=[str(tmp_path / "nodir"), str(certs)], bundled=str(second))
    assert chosen == {"SSL_CERT_FILE": str(first), "SSL_CERT_DIR": str(certs)}


def test_bundled_roots_only_when_the_host_has_no_bundle(tmp_path):
    bundled = tmp_path / "cacert.pem"
    bundled.write_text("x")
    assert hook.choose_roots({}, files=[str(tmp_path / "none.crt")], dirs=[], bundled=str(bundled)) == {
        "SSL_CERT_FILE": str(bundled)}
    assert hook.choose_roots({}, files=[], dirs=[], bundled=str(tmp_path / "gone.pem")) == {}


def test_go_list_is_the_default():
    assert hook.CERT_FILES[0] == "/etc/ssl/certs/ca-certificates.crt"
    assert "/etc/ssl/cert.pem" in hook.CERT_FILES and "/etc/pki/tls/certs" in hook.CERT_DIRS
