"""The verification report as CI systems read it: JUnit XML (``--junit``) and a Markdown table for a
pull-request comment (``--summary-md``).

JUnit: one test suite per run, one test case per backend and T (``onnx T=1``, ``lava T=2``, ...),
plus the batch-one check; a case fails with the criterion that failed on it (the same text
``--verify`` prints), so a CI page shows which backend broke which criterion. Backends that are
information only (``ann_ort_opt``, ``lava_fixed``) pass unless an explicit criterion names them.
"""
from __future__ import annotations

import os
import re
from xml.etree import ElementTree

from pmsm.runtime.base.files import atomic_write_bytes
from pmsm.verification import BATCH_ONE, BATCH_ONE_FAILURE


def _cases(report: dict) -> list[tuple[str, str, float, list[str]]]:
    """``(class, name, seconds, failures)`` per backend and T."""
    verification = report["verification"]
    failures = list(verification["failures"])
    cases = []
    claimed: set[int] = set()
    for backend, by_t in verification["backends"].items():
        for t, entry in by_t.items():
            pattern = re.compile(rf"^{re.escape(BATCH_ONE_FAILURE)}" if backend == BATCH_ONE
                                 else rf"^{re.escape(backend)} at T={t}\b(?!, one sample at a time)")
            mine = [i for i, text in enumerate(failures) if pattern.match(text) and i not in claimed]
            claimed.update(mine)
            cases.append((backend, f"{backend} T={t}", float(entry.get("seconds") or 0.0), [failures[i] for i in mine]))
    unclaimed = [text for i, text in enumerate(failures) if i not in claimed]
    if unclaimed:
        cases.append(("verification", "other criteria", 0.0, unclaimed))
    return cases


def junit_xml(report: dict) -> bytes:
    cases = _cases(report)
    model = os.path.basename(report["model"]["path"])
    suite = ElementTree.Element("testsuite", {
        "name": f"pmsm-export verify {model} ({report['target']})",
        "tests": str(len(cases)),
        "failures": str(sum(1 for case in cases if case[3])),
        "errors": "0",
        "time": f"{report['verification'].get('wall_seconds', 0.0):.3f}",
    })
    properties = ElementTree.SubElement(suite, "properties")
    for name, value in (("model", report["model"]["path"]), ("sha256", report["model"]["sha256"]),
                        ("samples", report["verification"]["samples"]),
                        ("timesteps", ",".join(map(str, report["timesteps"])))):
        ElementTree.SubElement(properties, "property", {"name": name, "value": str(value)})
    for classname, name, seconds, failed in cases:
        case = ElementTree.SubElement(suite, "testcase", {"classname": f"pmsm.{classname}", "name": name,
                                                          "time": f"{seconds:.3f}"})
        for text in failed:
            failure = ElementTree.SubElement(case, "failure", {"message": text, "type": "criterion"})
            failure.text = text
    root = ElementTree.Element("testsuites")
    root.append(suite)
    ElementTree.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(root, encoding="utf-8") + b"\n"


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def summary_markdown(report: dict) -> str:
    verification = report["verification"]
    model = os.path.basename(report["model"]["path"])
    verdict = "passed" if verification["passed"] else "**FAILED**"
    lines = [f"### pmsm-export verification of `{model}` (target {report['target']}): {verdict}", "",
             f"{verification['samples']} samples, T = {', '.join(map(str, report['timesteps']))}; "
             f"source ANN accuracy {_percent(report['accuracy']['ann'])}", "",
             "| backend | T | vs | samples | max abs diff | spikes differing | agreement | accuracy | time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for backend, by_t in verification["backends"].items():
        for t, e in by_t.items():
            mismatch = f"{e['spike_mismatch']:,} of {e['spike_total']:,}" if e["spike_total"] else "–"
            lines.append(f"| {backend} | {t} | {e['reference']} | {e.get('samples', verification['samples']):,} | "
                         f"{e['max_abs_diff']:.3g} | {mismatch} | {_percent(e['argmax_agreement'])} | "
                         f"{_percent(e['accuracy'])} | {e.get('seconds', 0):.2f} s |")
    if verification["failures"]:
        lines += ["", "Failed criteria:", ""] + [f"- {text}" for text in verification["failures"]]
    lines += ["", "Criteria: " + "; ".join(verification["criteria"])]
    return "\n".join(lines) + "\n"


def write_junit(report: dict, path: str) -> None:
    atomic_write_bytes(path, junit_xml(report))


def write_summary_markdown(report: dict, path: str) -> None:
    atomic_write_bytes(path, summary_markdown(report).encode("utf-8"))
