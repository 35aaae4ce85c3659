"""End-to-end check of scripts/record_capture.py: real server, real client, real tcpdump."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECORD_CAPTURE = Path(__file__).resolve().parent.parent / "scripts" / "record_capture.py"
REQUESTS = 40
# Magic numbers of classic pcap files in both byte orders, microsecond and nanosecond variants.
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="record_capture.py runs tcpdump on the loopback interface, which needs root",
)
@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_record_capture_writes_consistent_truth(tmp_path: Path) -> None:
    capture = tmp_path / "recorder.pcap"
    result = subprocess.run(
        [
            sys.executable, str(RECORD_CAPTURE),
            "--out", str(capture), "--requests", str(REQUESTS), "--seed", "7",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"record_capture.py failed:\n{result.stdout}\n{result.stderr}"

    assert capture.read_bytes()[:4] in PCAP_MAGICS
    truth = json.loads((tmp_path / "recorder.truth.json").read_text())
    transactions = truth["transactions"]
    by_key = truth["by_key"]
    totals = truth["totals"]

    assert truth["requests"] == REQUESTS
    assert truth["seed"] == 7
    assert len(transactions) == REQUESTS
    assert totals["requests"] == REQUESTS
    assert totals["request_bytes"] == sum(t["request_bytes"] for t in transactions)
    assert totals["response_bytes"] == sum(t["response_bytes"] for t in transactions)

    assert sum(entry["requests"] for entry in by_key) == totals["requests"]
    assert sum(entry["request_bytes"] for entry in by_key) == totals["request_bytes"]
    assert sum(entry["response_bytes"] for entry in by_key) == totals["response_bytes"]
    keys = [(entry["method"], entry["path"], entry["status"]) for entry in by_key]
    assert keys == sorted(keys)
    assert len(keys) == len(set(keys))

    for transaction in transactions:
        assert "?" not in transaction["path"], transaction
        assert transaction["request_bytes"] > 0, transaction
        assert transaction["response_bytes"] > 0, transaction
    statuses = {transaction["status"] for transaction in transactions}
    assert 404 in statuses
    assert 201 in statuses
