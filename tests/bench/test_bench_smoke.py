"""Smoke test of the benchmark harness (bench/): a quick run into a temp dir.

No timing is asserted (benchmarks never gate CI on absolute numbers): only that one command
builds the Go driver, starts the processes, runs every scenario on every path it has (the echo
floor, the open-loop maximum and the --workers 2 comparison included), and writes the JSON, the
markdown report and the plots. LiteLLM is left out to stay around a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import driver

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = (
    "unary_c1",
    "unary_c64",
    "embeddings_c1",
    "embeddings_c16",
    "stream64_c1",
    "stream64_c64",
    "cadence_max_streams",
    "rss_per_stream",
    "upload_256mib",
    "cancellations_1000",
)
# Scenarios shaped differently: the echo floor (loads on one server), the open-loop maximum
# (every path) and --workers 2 against 1 (two gateway points).
NEW_SCENARIOS = ("echo_floor", "max_rps", "workers_scaling")
TARGETS = (
    "echo_ratio",
    "added_latency",
    "cadence_streams",
    "cpu_per_event",
    "vs_litellm",
    "workers_2",
    "rss_per_stream",
    "cancellations",
)
PATHS = ("gateway", "direct", "litellm")
LEVERS = (
    "upstream_transport",
    "event_loop",
    "json_library",
    "codec_json_path",
    "embeddings_base64",
    "coalesce_events",
    "tracing",
    "shared_rate_limit",
)


@pytest.mark.slow
def test_quick_run_writes_every_scenario(tmp_path: Path) -> None:
    results, md = tmp_path / "results", tmp_path / "benchmarks.md"
    # Build the Go driving side here (a clean clone compiles grpc-go: minutes), so the quick run's
    # own time limit below is about the run; bench.run finds the binary up to date.
    driver.ensure(tmp_path / "driver_build.log")
    cmd = [
        sys.executable, "-m", "bench.run", "--quick", "--no-litellm",
        "--results-dir", str(results), "--docs-out", str(md), "--log-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    files = list(results.glob("*-quick.json"))
    assert len(files) == 1, files
    data = json.loads(files[0].read_text())
    assert data["quick"] is True
    for key in ("machine", "versions", "pinning", "plan", "targets", "notes", "harness"):
        assert key in data
    assert data["machine"]["nproc"] >= 1 and "cpu_model" in data["machine"]
    assert set(SCENARIOS) <= set(data["scenarios"])
    for key in SCENARIOS:
        paths = data["scenarios"][key]["paths"]
        assert set(PATHS) <= set(paths), (key, sorted(paths))
        # The gateway is measured in every scenario, and so is the direct path where it applies.
        assert "skipped" not in paths["gateway"] and "failed" not in paths["gateway"], (key, paths["gateway"])
        assert "skipped" in paths["litellm"], key
    for key in ("unary_c1", "unary_c64", "stream64_c64"):
        gw = data["scenarios"][key]["paths"]["gateway"]
        assert gw["loadgen"]["ok"] > 0, (key, gw["loadgen"])
        assert gw["loadgen"]["loop"] == "go", gw["loadgen"]  # the Go load generator drove it
        assert gw["processes"]["middle"]["cpu_s"] >= 0
    # The Go driving side and its ceiling (the direct path's figures), printed beside the gateway's.
    harness = data["harness"]
    assert harness["driver"] == "go" and "Go" in harness["fake_upstream"]
    assert harness["ceiling"]["unary_rps_c64"] > 0 and harness["ceiling"]["stream_events_per_s_c64"] > 0
    scen = data["scenarios"]
    assert set(NEW_SCENARIOS) <= set(scen)
    # The echo floor ran every load without an error (how many calls fit in a quick window depends
    # on what else the machine runs, so no count is asserted).
    for load in ("unary_c1", "unary_c64", "stream64_c64"):
        echo = scen["echo_floor"]["loads"][load]
        assert echo["loadgen"]["errors"] == 0 and "middle" in echo["processes"], (load, echo)
    assert sum(scen["echo_floor"]["loads"][load]["loadgen"]["ok"] for load in ("unary_c1", "unary_c64")) > 0
    for path in ("gateway", "direct"):
        lg = scen["max_rps"]["paths"][path]["loadgen"]
        assert lg["steps"] and "max_rps" in lg and lg["stop"], (path, lg)
    assert "skipped" in scen["max_rps"]["paths"]["litellm"]
    workers = scen["workers_scaling"]
    if "skipped" not in workers:
        for key in ("workers_1", "workers_2"):
            assert workers["points"][key]["loadgen"]["errors"] == 0, (key, workers["points"][key])
        assert "ratio" in workers
    # Levers: every setting measured both ways (tiny loads), with a figure, a ratio and a verdict.
    items = data["levers"]["items"]
    assert set(LEVERS) <= set(items), sorted(items)
    for key in LEVERS:
        item = items[key]
        assert "skipped" not in item and "failed" not in item, (key, item)
        assert item["verdict"] and item["verdict_kind"] in ("keep", "reconsider", "noise"), (key, item)
        if key == "shared_rate_limit":
            cases = item["limiter"]["cases"]
            assert cases["in_process"]["cpu_us_per_call"] > 0
            assert any(k.startswith("redis") and v["cpu_us_per_call"] > 0 for k, v in cases.items()), cases
            continue
        if key == "codec_json_path":
            for case in item["codec"]["cases"].values():
                assert case["decode"]["codec_us"] > 0 and case["decode"]["json_format_us"] > 0
                assert case["encode"]["codec_us"] > 0 and case["encode"]["json_format_us"] > 0
            continue
        entry = item["loads"][item["primary_load"]]
        assert entry["ratio"] > 0, (key, entry)
        assert entry["chosen"]["errors"] == 0 and entry["alternative"]["errors"] == 0, (key, entry)
    emb = items["embeddings_base64"]["loads"]["embeddings_c16"]
    assert emb["chosen"]["upstream_encoding_format"] == "base64", emb
    assert emb["alternative"]["upstream_encoding_format"] != "base64", emb

    assert [t["key"] for t in data["targets"]] == list(TARGETS)
    for t in data["targets"]:
        assert t["verdict"] in ("met", "missed", "n/a"), t
        assert "moonshot_met" in t and "ceiling" in t, t
    by_key = {t["key"]: t for t in data["targets"]}
    for key in ("added_latency", "cpu_per_event", "cadence_streams", "rss_per_stream"):
        assert by_key[key]["verdict"] != "n/a", by_key[key]

    text = md.read_text()
    assert "## Targets" in text and "## Primary figures" in text and "## Levers" in text
    assert "GetBusbar-comparable" in text and "harness ceiling" in text and "moonshot" in text
    for key in (*SCENARIOS, *NEW_SCENARIOS, *LEVERS):
        assert key in text, key
    for plot in data["plots"].values():
        assert Path(plot).is_file(), plot
