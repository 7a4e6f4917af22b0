"""scripts/spec_drift.py: no gap on the vendored spec; a drifted document's gaps are listed."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

from tests.support import specmodel
from tests.support.protomodel import ROOT

SCRIPT = ROOT / "scripts/spec_drift.py"


def run(document: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(document)], capture_output=True, text=True)


def test_the_vendored_spec_has_no_gap_for_the_covered_endpoints() -> None:
    proc = run(specmodel.OPENAPI)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "92 covered endpoints: 0 gaps" in proc.stdout
    assert "GAP" not in proc.stdout


def test_a_newer_document_lists_what_the_protos_lack(tmp_path: Path) -> None:
    spec = copy.deepcopy(specmodel.load_spec())
    chat = spec["components"]["schemas"]["CreateChatCompletionRequest"]["allOf"][1]["properties"]
    chat["reasoning_budget"] = {"type": "integer"}
    spec["paths"]["/models"]["get"].setdefault("parameters", []).append(
        {"name": "owned_by", "in": "query", "schema": {"type": "string"}}
    )
    del spec["paths"]["/batches/{batch_id}/cancel"]
    spec["paths"]["/models/{model}/aliases"] = {"get": {"responses": {}}}
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(spec, default=str))  # YAML dates in examples

    proc = run(document)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    gaps = [line for line in proc.stdout.splitlines() if line.startswith("GAP")]
    assert any("POST /batches/{batch_id}/cancel: not in the document" in g for g in gaps), gaps
    assert any("ListModelsRequest.owned_by" in g and g.startswith("GAP   parameter") for g in gaps), gaps
    assert any("CreateChatCompletionRequest.reasoning_budget" in g for g in gaps), gaps
    assert any("StreamChatCompletionRequest.reasoning_budget" in g for g in gaps), gaps
    assert "info  endpoint  GET /models/{model}/aliases: new under a covered prefix" in proc.stdout
    assert len(gaps) == 4, gaps
