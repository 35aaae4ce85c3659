"""Compare netmon's transactions on the public captures with tshark's truth.

The corpus lives beside the project in ../shared/pcaps/public/ (not copied
into the repository). Each capture has a truth file with one JSON line per
HTTP transaction; a line is "clean" when its flags are empty or only
``stream_has_gaps`` / ``tshark_pairing_differs``.

Run as a script for a per-file report:
    python3 tests/corpus.py [--verbose]
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "pcaps" / "public"
EXPECTATIONS = Path(__file__).resolve().parent / "corpus_expectations.json"

CLEAN_FLAGS = {"stream_has_gaps", "tshark_pairing_differs"}


def load_manifest():
    with open(CORPUS / "MANIFEST.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def load_truth(name):
    path = CORPUS / "truth" / (name + ".jsonl")
    if not path.exists():
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def is_clean(line):
    return all(flag.split(":")[0] in CLEAN_FLAGS for flag in line["flags"])


def ports_of(entry):
    return [int(port) for port in entry["http_ports"].split(",") if port.strip()]


def run_netmon(path, ports, fmt="jsonl"):
    args = [sys.executable, "-m", "netmon", "analyze", str(path), "--format", fmt]
    for port in ports:
        args += ["--port", str(port)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def uri_path(uri):
    if uri is None:
        return None
    if "://" in uri[:16] and not uri.startswith("/"):
        rest = uri.split("://", 1)[1]
        slash = rest.find("/")
        uri = rest[slash:] if slash >= 0 else "/"
    for mark in "?#":
        cut = uri.find(mark)
        if cut >= 0:
            uri = uri[:cut]
    return uri


def expected_response_bytes(line):
    if line["resp_wire_bytes"] is None:
        return None
    return line["resp_wire_bytes"] + sum(item["wire_bytes"] for item in line["interim"] or ())


def compare(truth, transactions):
    """Match truth lines to netmon transactions; return per-line results.

    Lines are matched within the same client/server pair, in order, on
    method, path and status. Each result is (line, transaction or None,
    list of mismatching fields).
    """
    by_pair = {}
    for index, transaction in enumerate(transactions):
        by_pair.setdefault((transaction["client"], transaction["server"]), []).append(index)
    used = set()
    results = []
    for line in truth:
        candidates = by_pair.get((line["client"], line["server"]), [])
        want = (line["method"], uri_path(line["uri"]), line["status"])
        found = None
        for index in candidates:
            if index in used:
                continue
            transaction = transactions[index]
            if (transaction["method"], transaction["path"], transaction["status"]) == want:
                found = index
                break
        if found is None:
            results.append((line, None, ["missing"]))
            continue
        used.add(found)
        transaction = transactions[found]
        problems = []
        if line["method"] is not None and line["req_wire_bytes"] is not None:
            if transaction["request_bytes"] != line["req_wire_bytes"]:
                problems.append(f"request_bytes {transaction['request_bytes']} != {line['req_wire_bytes']}")
        response_bytes = expected_response_bytes(line)
        if line["status"] is not None and response_bytes is not None:
            if transaction["response_bytes"] != response_bytes:
                problems.append(f"response_bytes {transaction['response_bytes']} != {response_bytes}")
        results.append((line, transaction, problems))
    return results


def load_expectations():
    if not EXPECTATIONS.exists():
        return {}
    with open(EXPECTATIONS) as handle:
        return json.load(handle)


def line_id(name, line):
    return f"{name}#{line['stream']}:{line['method']} {line['uri']} -> {line['status']}"


def main(argv):
    verbose = "--verbose" in argv
    totals = {"clean": 0, "clean_ok": 0, "other": 0, "other_ok": 0}
    for entry in load_manifest():
        name = entry["file"]
        truth = load_truth(name)
        result = run_netmon(CORPUS / name, ports_of(entry))
        transactions = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        crashed = "Traceback" in result.stderr
        file_clean = file_clean_ok = 0
        for line, _, problems in compare(truth, transactions):
            clean = is_clean(line)
            key = "clean" if clean else "other"
            totals[key] += 1
            if not problems:
                totals[key + "_ok"] += 1
            if clean:
                file_clean += 1
                file_clean_ok += not problems
            if problems and clean and verbose:
                print(f"  MISMATCH {line_id(name, line)}: {', '.join(problems)}")
        status = "CRASH" if crashed else f"exit {result.returncode}"
        print(f"{name}: {file_clean_ok}/{file_clean} clean lines, {len(transactions)} transactions, {status}")
        if crashed:
            print(result.stderr)
    print(
        f"clean lines matched: {totals['clean_ok']}/{totals['clean']}; "
        f"other lines matched: {totals['other_ok']}/{totals['other']}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])


def parse_exposition(text):
    """Return {(name, frozenset(labels.items())): value} from a text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def conservation_problems(samples):
    """Check payload == attributed + unattributed per direction; return problems."""
    problems = []
    for direction in ("inbound", "outbound"):
        payload = samples[("netmon_tcp_payload_bytes_total", frozenset({("direction", direction)}))]
        attributed = samples[("netmon_http_message_bytes_total", frozenset({("direction", direction)}))]
        unattributed = sum(
            value
            for (name, labels), value in samples.items()
            if name == "netmon_unattributed_bytes_total" and ("direction", direction) in labels
        )
        if payload != attributed + unattributed:
            problems.append(
                f"{direction}: payload {payload:.0f} != attributed {attributed:.0f} + unattributed {unattributed:.0f}"
            )
    return problems
