"""Output formats for ``netmon analyze``: per-endpoint table and jsonl."""

import ipaddress
import json
import math



def format_endpoint(address):
    ip, port = address
    text = str(ipaddress.ip_address(ip))
    if len(ip) == 16:
        return f"[{text}]:{port}"
    return f"{text}:{port}"


class JsonlWriter:
    """Write one JSON object per transaction to a text stream."""

    def __init__(self, out, path_of):
        self.out = out
        self.path_of = path_of

    def __call__(self, transaction, method, endpoint):
        record = transaction_record(transaction, self.path_of, endpoint)
        self.out.write(json.dumps(record) + "\n")


def transaction_record(transaction, path_of, endpoint):
    """Return the jsonl object of a transaction; ``endpoint`` is its metric label."""
    request = transaction.request
    response = transaction.response
    first = request if request is not None else response
    last = response if response is not None else request
    record = {
        "ts": round(first.start_ts, 6),
        "client": format_endpoint(transaction.client),
        "server": format_endpoint(transaction.server),
        "method": request.method if request is not None else None,
        "path": path_of(request.target) if request is not None else None,
        "endpoint": endpoint if request is not None else None,
        "status": response.status if response is not None else None,
        "request_bytes": request.wire_bytes if request is not None else 0,
        "response_bytes": response.wire_bytes if response is not None else 0,
        "duration_s": round(max(0.0, last.end_ts - first.start_ts), 6),
        "complete": transaction.complete,
    }
    if response is not None and response.interim:
        record["interim"] = list(response.interim)
    return record


class EndpointTable:
    """Aggregate transactions per (method, endpoint, status) for the table view."""

    def __init__(self):
        self.rows = {}
        self.dropped = 0

    def __call__(self, transaction, method, endpoint):
        request = transaction.request
        response = transaction.response
        if endpoint is None:
            self.dropped += 1
            return
        status = str(response.status) if response is not None else "-"
        row = self.rows.get((method, endpoint, status))
        if row is None:
            row = self.rows[(method, endpoint, status)] = ([], [])
        row[0].append(request.wire_bytes if request is not None else 0)
        row[1].append(response.wire_bytes if response is not None else 0)

    def render(self):
        header = ("METHOD", "ENDPOINT", "STATUS", "REQUESTS", "REQ_BYTES", "RESP_BYTES",
                  "REQ_P50", "REQ_P95", "RESP_P50", "RESP_P95")
        lines = [header]
        total_requests = total_in = total_out = 0
        for (method, endpoint, status), (request_sizes, response_sizes) in sorted(self.rows.items()):
            request_sizes.sort()
            response_sizes.sort()
            lines.append((
                method, endpoint, status, str(len(request_sizes)),
                str(sum(request_sizes)), str(sum(response_sizes)),
                str(percentile(request_sizes, 50)), str(percentile(request_sizes, 95)),
                str(percentile(response_sizes, 50)), str(percentile(response_sizes, 95)),
            ))
            total_requests += len(request_sizes)
            total_in += sum(request_sizes)
            total_out += sum(response_sizes)
        lines.append(("TOTAL", "", "", str(total_requests), str(total_in), str(total_out), "", "", "", ""))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        numeric = set(range(3, len(header)))
        out = []
        for line in lines:
            cells = [
                cell.rjust(width) if i in numeric else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths))
            ]
            out.append("  ".join(cells).rstrip())
        return "\n".join(out) + "\n"


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
