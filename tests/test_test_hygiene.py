"""The test suite and the demo behave on a developer's machine: no key material left behind, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_test_pki_directory_with_private_keys_is_removed_when_the_process_exits():
    code = ("import sys; sys.path.insert(0, 'tests'); import http_peers; c = http_peers.certs(); "
            "c.leaf.files(c.tmp, 'leaf'); print(c.tmp)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    tmp = Path(proc.stdout.strip())
    assert tmp.name.startswith("pw-certs-")
    assert not tmp.exists(), f"{tmp} (holding a CA private key) was left behind"


def test_demo_without_redis_server_says_what_to_install_instead_of_a_traceback(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no redis-server on PATH
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "redis-server" in proc.stderr and "apt-get install redis-server" in proc.stderr
