"""The command line: `info` reports the build, `check-ops` runs every op against its reference."""

import json
import os
import subprocess
import sys

from pix2pixhd_fast import cli


def test_info_reports_the_build(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ops_loaded"] is True
    assert {"cuda_kernels", "cuda_archs", "built_torch_version", "torch_version"} <= set(info)


def test_check_ops_agrees_with_reference(capsys):
    assert cli.main(["check-ops", "--height", "48", "--width", "96"]) == 0
    out = capsys.readouterr().out
    assert "ops loaded: True" in out and "all operators agree with the reference" in out
    for op in ("instance_boundary", "encode_input", "instance_avg_pool", "instance_norm_relu", "instance_norm_act_pad"):
        assert op in out


def _check_ops(**env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pix2pixhd_fast.cli", "check-ops", "--height", "32", "--width", "64"]
    return subprocess.run(cmd, env=dict(os.environ, **env), capture_output=True, text=True, timeout=300)


def test_check_ops_fails_without_the_library():
    # References on request: the ops would compare the reference with itself, so check-ops must not pass.
    for env in ({"P2PHD_DISABLE_EXT": "1"}, {"P2PHD_ALLOW_FALLBACK": "1", "P2PHD_LIB": "/nonexistent/_C.so"}):
        r = _check_ops(**env)
        assert r.returncode == 1, (env, r.stdout, r.stderr)
        assert "error: the compiled operators are not loaded" in r.stderr
        assert "agree" not in r.stdout
    # Not on request: the package does not import, and says how to build the library.
    r = _check_ops(P2PHD_LIB="/nonexistent/_C.so", P2PHD_DISABLE_EXT="0", P2PHD_ALLOW_FALLBACK="0")
    assert r.returncode != 0 and "agree" not in r.stdout
    assert "ImportError" in r.stderr and "make install" in r.stderr
