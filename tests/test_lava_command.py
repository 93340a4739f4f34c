"""`pmsm-export --target lava`: what the command prints about its Lava backends."""
from __future__ import annotations

import io
import re

import pytest

from pmsm.cli import main
from pmsm.report import print_summary


@pytest.mark.lava
def test_verify_prints_how_long_each_backend_took(qdq_mlp_path, tmp_path, capsys):
    assert main([qdq_mlp_path, "--target", "lava", "-o", str(tmp_path / "mlp.nir"), "--verify",
                 "--timesteps", "1,2"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        match = re.match(r"\s+(ann|onnx|nir|lava|lava_fixed)\s+(\S+)\s.*?(\d[\d.e+-]*) (s|ms)$", line)
        if match:
            rows[(match.group(1), match.group(2))] = float(match.group(3)) * (1e-3 if match.group(4) == "ms" else 1)
    assert set(rows) == {("ann", "-")} | {(b, t) for b in ("onnx", "nir", "lava", "lava_fixed") for t in "12"}
    assert all(seconds > 0 for seconds in rows.values())


def test_the_summary_names_the_layers_whose_state_overflowed_24_bits():
    comparison = {"reference": "onnx", "max_abs_diff": 0.5, "spike_mismatch": 3, "spike_total": 100,
                  "argmax_agreement": 1.0, "accuracy": None, "seconds": 2.0}
    report = {"model": {"path": "m.onnx"}, "accuracy": {"ann": None},
              "verification": {"samples": 4, "passed": True, "ann_seconds": 0.1,
                               "backends": {"lava_fixed": {"1": comparison}}},
              "lava_fixed_point": {"1": [
                  {"node": "conv1", "kind": "conv", "max_rel_error": 0.01, "payload_bits": 8, "overflow_count": 12},
                  {"node": "q1", "kind": "neuron", "state_bits": 26, "payload_bits": 3, "overflow": True},
                  {"node": "q2", "kind": "neuron", "state_bits": 18, "payload_bits": 3, "overflow": False}]}}
    out = io.StringIO()
    print_summary(report, out)
    assert "OVERFLOW beyond 24 bits in 2 layer(s): conv1, q1" in out.getvalue()
    assert "26-bit state" in out.getvalue()
