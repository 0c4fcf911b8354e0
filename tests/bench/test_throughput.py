"""Smoke test of bench/throughput.py on a tiny corpus: the benchmark itself must keep working
(its figures are not checked here; timings never are in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.images import from_array

REPO = Path(__file__).resolve().parents[2]


def small_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(7)
    for i, (w, h) in enumerate([(1600, 1200), (900, 1400)]):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        from_array(pixels).gaussblur(2).jpegsave(str(corpus / f"{i}.jpg"), Q=90)
    return corpus


def test_benchmark_runs_and_the_service_matches_the_floor_byte_for_byte(tmp_path):
    corpus = small_corpus(tmp_path)
    results = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            "bench/throughput.py",
            "--corpus",
            str(corpus),
            "--rounds",
            "2",
            "--n",
            "4",
            "--concurrency",
            "2",
            "--floor-procs",
            "1",
            "--results-dir",
            str(results),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [record_path] = results.glob("throughput-*.json")
    record = json.loads(record_path.read_text())
    assert record["verify"]["byte_identical"] == 2 and not record["verify"]["mismatches"]
    service = record["summary"]["service c2"]
    assert service["errors"] == 0
    assert len(service["ratio_per_round"]) == 2 and service["ratio"] > 0
    assert all(len(bursts) == 2 for bursts in record["bursts"].values())
    assert all(b["n"] == 4 for bursts in record["bursts"].values() for b in bursts)
    assert "ratio = median over rounds" in done.stdout
    config = record["config"]
    if len(os.sched_getaffinity(0)) >= 2:  # the default layout pins when it can
        assert config["layout"] == "pinned"
        assert set(config["arm_cpus"]).isdisjoint(config["client_cpus"])
        assert "layout: pinned" in done.stdout


def test_pinned_commands_run_on_the_cpus_they_are_given():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import throughput
    finally:
        sys.path.remove(str(REPO / "bench"))
    cpu = min(os.sched_getaffinity(0))
    probe = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
    out = subprocess.run(
        throughput.pinned(probe, frozenset({cpu})), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"[{cpu}]"
    assert throughput.pinned(probe, None) == probe
    assert throughput.plan_cpus("shared", 1) == (None, None)
    arm, client = throughput.plan_cpus("pinned", 1)
    usable = os.sched_getaffinity(0)
    if len(usable) >= 2:
        assert len(client) == 1 and arm | client == usable and not arm & client
    else:
        assert (arm, client) == (None, None)


def test_transport_benchmark_runs_both_malloc_policies(tmp_path):
    corpus = small_corpus(tmp_path)
    done = subprocess.run(
        [sys.executable, "bench/grpc_transport.py", "--corpus", str(corpus), "--n", "10"]
        + ["--repeats", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("repeat 1")]
    assert len(rows) == 2
    assert all("errors 0" in row for row in rows)


def bench_module(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_malloc_policies_parse_and_map_to_the_service_settings():
    throughput = bench_module("throughput")
    policy = throughput.parse_policy("arena1+tuning")
    assert (policy.arena_max, policy.tuning, policy.name) == (1, True, "arena1+tuning")
    assert policy.role_args() == ["--arena-max", "1", "--malloc-tuning", "on"]
    assert policy.server_env() == {
        "IMAGESVC_MALLOC_ARENA_MAX": "1",
        "IMAGESVC_MALLOC_TUNING": "true",
    }
    glibc = throughput.parse_policy("glibc")
    assert (glibc.arena_max, glibc.tuning, glibc.name) == (0, False, "glibc")
    for bad in ("arena0", "arena", "tuning", "glibc+fast", "arenax"):
        with pytest.raises(ValueError):
            throughput.parse_policy(bad)
    # Without --policies the benchmark runs the service's own default.
    from imagesvc import memory

    default = throughput.service_default_policy()
    assert (default.arena_max, default.tuning) == (
        memory.DEFAULT_ARENA_MAX,
        memory.DEFAULT_THRESHOLDS,
    )


def test_several_corpora_and_policies_report_peak_and_idle_rss(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = small_corpus(tmp_path / "a")
    second = small_corpus(tmp_path / "b")
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "bench/throughput.py", "--corpus", f"{first},{second}"]
        + ["--rounds", "1", "--n", "2", "--concurrency", "2", "--floor-procs", "0"]
        + ["--policies", "glibc,arena1+tuning", "--idle-s", "0.5"]
        + ["--results-dir", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(p.read_text()) for p in sorted(results.glob("throughput-*.json"))]
    assert len(records) == 2
    for record in records:
        assert record["config"]["policies"] == ["glibc", "arena1+tuning"]
        summary = record["summary"]
        floor = summary[f"floor {record['config']['workers']}thr glibc"]
        service = summary["service c2 arena1+tuning"]
        assert service["policy"] == "arena1+tuning" and floor["policy"] == "glibc"
        for row in (floor, service):
            assert row["peak_rss_mb"] > 0 and row["idle_rss_mb"] > 0
        assert service["ratio"] > 0 and service["vs_reference"] > 0
        assert floor["rss_loaded_mb"] >= floor["rss_base_mb"] > 0
    assert "memory by corpus" in done.stdout
    assert done.stdout.count("service c2 arena1+tuning") >= 4


def test_the_photo_corpus_is_deterministic(tmp_path):
    photos = bench_module("photos")
    one = photos.build("photos", tmp_path / "one", log=lambda line: None)
    two = photos.build("photos", tmp_path / "two", log=lambda line: None)
    assert len(one) == len(photos.PHOTOS) == 20
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    # A second build reuses what is there.
    before = {p: p.stat().st_mtime_ns for p in one}
    assert photos.build("photos", tmp_path / "one", log=lambda line: None) == one
    assert {p: p.stat().st_mtime_ns for p in one} == before
