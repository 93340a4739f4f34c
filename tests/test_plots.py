"""Pictures of a report: written atomically as PNG files, from the report dictionary alone."""
import os

import numpy as np
import pytest

from pmsm.plots import write_pictures
from pmsm.energy import energy_report
from test_energy import X, spiking, tiny_mlp

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report():
    model = tiny_mlp()
    runner = spiking(model)
    x = np.concatenate([X, X * 0.5, -X], axis=0)
    spikes = {t: runner.run(x, t, collect_spikes=True).spikes for t in (1, 2, 4)}
    return {
        "schema": "pmsm-report/1",
        "model": {"path": "/somewhere/tiny.onnx", "sha256": "0" * 64},
        "timesteps": [1, 2, 4],
        "accuracy": {"ann": 0.9, "snn": {"1": 0.9, "2": 0.85, "4": 0.95}},
        "energy": energy_report(model, spikes, len(x)),
    }


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _check_png(path):
    assert os.path.isfile(path)
    data = _read(path)
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5000  # a drawn figure, not an empty canvas


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    return str(folder), write_pictures(report, str(folder), "run")


def test_writes_the_three_pictures(written):
    folder, paths = written
    assert [os.path.basename(p) for p in paths] == ["run-accuracy.png", "run-energy.png", "run-spikes.png"]
    assert all(os.path.dirname(p) == folder for p in paths)
    for path in paths:
        _check_png(path)


def test_rewrite_replaces_the_files_and_leaves_no_temporary(report, written):
    folder, paths = written
    before = {p: _read(p) for p in paths}
    unlabelled = dict(report, accuracy={"ann": None, "snn": {"1": None, "2": None, "4": None}})
    again = write_pictures(unlabelled, folder, "run")
    assert [os.path.basename(p) for p in again] == ["run-energy.png", "run-spikes.png"]  # no accuracy without labels
    for path in again:
        _check_png(path)
        assert _read(path) == before[path]  # same drawing, replaced in place
    assert sorted(os.listdir(folder)) == ["run-accuracy.png", "run-energy.png", "run-spikes.png"]


def test_empty_energy_section_writes_no_energy_pictures(report, tmp_path):
    paths = write_pictures(dict(report, energy={}), str(tmp_path), "r")
    assert [os.path.basename(p) for p in paths] == ["r-accuracy.png"]
    assert write_pictures({"accuracy": {"ann": None, "snn": {}}, "energy": {}}, str(tmp_path), "none") == []
