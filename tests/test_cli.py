"""The command line: `info` reports the build, `demo` runs every op against its reference."""

import json

from pix2pixhd_fast import cli


def test_info_reports_the_build(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ops_loaded"] is True
    assert {"cuda_kernels", "cuda_archs", "built_torch_version", "torch_version"} <= set(info)


def test_demo_agrees_with_reference(capsys):
    assert cli.main(["check-ops", "--height", "48", "--width", "96"]) == 0
    out = capsys.readouterr().out
    assert "all operators agree with the reference" in out
    for op in ("instance_boundary", "encode_input", "instance_avg_pool", "instance_norm_relu"):
        assert op in out
