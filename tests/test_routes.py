"""Tests for netmon.routes: endpoint labels, method labels and route files."""

import json
import logging
import random
from pathlib import Path

import pytest

from netmon.routes import (
    CACHE_SIZE,
    MAX_CACHED_TARGET_LENGTH,
    EndpointMapper,
    RouteConfigError,
    is_id_segment,
    load_openapi,
    load_routes_file,
    normalize_method,
)

EXAMPLE_ROUTES = Path(__file__).resolve().parent.parent / "examples" / "scheduler-routes.toml"

SCHEDULER_TEMPLATES = [
    "/jobs",
    "/jobs/{id}",
    "/nodes/register",
    "/nodes/{id}/heartbeat",
    "/nodes",
]


# ---------------------------------------------------------------------------
# Template matching
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/jobs", "/jobs"),
        ("/jobs/42", "/jobs/{id}"),
        ("/jobs/nightly-backup", "/jobs/{id}"),
        ("/nodes", "/nodes"),
        ("/nodes/register", "/nodes/register"),
        ("/nodes/7/heartbeat", "/nodes/{id}/heartbeat"),
        ("/nodes/worker-a/heartbeat", "/nodes/{id}/heartbeat"),
        # No "/nodes/register/..." template, so the {id} branch matches.
        ("/nodes/register/heartbeat", "/nodes/{id}/heartbeat"),
        ("/jobs/42?verbose=1", "/jobs/{id}"),
        ("http://scheduler:8080/jobs/42", "/jobs/{id}"),
        ("/jobs/42/", "/jobs/{id}"),
        # Unmatched paths fall through to the heuristic.
        ("/jobs/42/logs", "/jobs/{id}/logs"),
        ("/nodes/7", "/nodes/{id}"),
        ("/nodes/worker-a", "/nodes/worker-a"),
    ],
)
def test_scheduler_templates(target, expected):
    mapper = EndpointMapper(SCHEDULER_TEMPLATES)

    assert mapper.endpoint(target) == expected


@pytest.mark.parametrize(
    ("templates", "target", "expected"),
    [
        # A literal beats {param}, whatever the template order.
        (["/nodes/{id}", "/nodes/register"], "/nodes/register", "/nodes/register"),
        (["/nodes/register", "/nodes/{id}"], "/nodes/register", "/nodes/register"),
        (["/nodes/register", "/nodes/{id}"], "/nodes/other", "/nodes/{id}"),
        # {param} beats "*".
        (["/files/*", "/files/{name}"], "/files/a", "/files/{name}"),
        (["/files/*", "/files/{name}"], "/files/a/b", "/files/*"),
        # A literal beats "*".
        (["/static/*", "/static/app.js"], "/static/app.js", "/static/app.js"),
        # "*" matches an empty remainder too.
        (["/static/*"], "/static", "/static/*"),
        (["/static/*"], "/static/css/site.css", "/static/*"),
        # An exact end beats "*" when the path ends at the same node.
        (["/static/*", "/static"], "/static", "/static"),
        # Segments compare from the left: a literal in segment 2 beats {x}.
        (["/a/{x}/c", "/a/b/*"], "/a/b/c", "/a/b/*"),
        (["/a/{x}/c", "/a/b/*"], "/a/q/c", "/a/{x}/c"),
        # The longer literal prefix wins.
        (["/api/*", "/api/v1/*"], "/api/v1/users", "/api/v1/*"),
        (["/api/*", "/api/v1/*"], "/api/v2/users", "/api/*"),
        # Backtracking: the literal branch fails deeper, so {id} is tried.
        (["/users/me", "/users/{id}/posts"], "/users/me/posts", "/users/{id}/posts"),
        # {param} matches exactly one segment.
        (["/jobs/{id}"], "/jobs/1/2", "/jobs/1/2"),
        (["/jobs/{id}"], "/jobs", "/jobs"),
        # "/*" matches every path, including "/".
        (["/*"], "/", "/*"),
        (["/*"], "/anything/at/all", "/*"),
        (["/"], "/", "/"),
        # A segment with literal text and a parameter beats {param}.
        (["/files/{name}", "/files/{name}.json"], "/files/a.json", "/files/{name}.json"),
        (["/files/{name}", "/files/{name}.json"], "/files/a.xml", "/files/{name}"),
        # More literal characters are more specific.
        (["/r/{a}.{b}", "/r/{a}.tar.gz"], "/r/x.tar.gz", "/r/{a}.tar.gz"),
        (["/r/{a}.{b}", "/r/{a}.tar.gz"], "/r/x.zip", "/r/{a}.{b}"),
        # Templates are compared after the path is decoded.
        (["/files/my report"], "/files/my%20report", "/files/my report"),
        (["/files/my%20report"], "/files/my%20report", "/files/my%20report"),
        # The label is the template text, trailing slash included.
        (["/jobs/"], "/jobs", "/jobs/"),
    ],
)
def test_template_specificity(templates, target, expected):
    mapper = EndpointMapper(templates, unmatched="path")

    assert mapper.endpoint(target) == expected


def test_template_param_names_share_node():
    mapper = EndpointMapper(["/jobs/{id}", "/jobs/{job}/logs"])

    assert mapper.endpoint("/jobs/5") == "/jobs/{id}"
    assert mapper.endpoint("/jobs/5/logs") == "/jobs/{job}/logs"


def test_template_duplicates_are_ignored():
    mapper = EndpointMapper(["/jobs/{id}", "/jobs/{id}"])

    assert mapper.endpoint("/jobs/5") == "/jobs/{id}"


def test_thousand_templates_match():
    templates = [f"/service{i}/items/{{id}}" for i in range(1000)] + ["/service7/items/special"]
    mapper = EndpointMapper(templates)

    assert mapper.endpoint("/service999/items/12") == "/service999/items/{id}"
    assert mapper.endpoint("/service7/items/special") == "/service7/items/special"
    assert mapper.endpoint("/service7/items/other") == "/service7/items/{id}"


def test_ten_thousand_node_ids_give_one_label():
    mapper = EndpointMapper(SCHEDULER_TEMPLATES)

    labels = {mapper.endpoint(f"/nodes/node-{i:05d}/heartbeat") for i in range(10_000)}

    assert labels == {"/nodes/{id}/heartbeat"}
    assert mapper.overflow_total == 0


# ---------------------------------------------------------------------------
# Heuristic for unmatched paths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "segment",
    [
        # decimal numbers
        "0",
        "42",
        "0007",
        "12345678901234567890",
        # UUIDs, either case
        "550e8400-e29b-41d4-a716-446655440000",
        "550E8400-E29B-41D4-A716-446655440000",
        # hex of 16 or more characters, letters only allowed
        "0123456789abcdef",
        "deadbeefdeadbeef",
        "DEADBEEFDEADBEEF",
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        # hex of 8 to 15 characters with a digit and a letter a-f
        "5f3a9c01",
        "abc12345",
        "1a2b3c4d5e6f7",
        # tokens of 16 or more characters with a letter and a digit
        "aZ09_-aZ09_-aZ09",
        "dGhpcyBpcyBhIHRva2VuMQ",
        "release-notes-2024",
        "user_1234567890ab",
    ],
)
def test_id_segment_positive(segment):
    assert is_id_segment(segment)


@pytest.mark.parametrize(
    "segment",
    [
        "v1",
        "v2beta1",
        "api",
        "healthz",
        "metrics",
        "users",
        "2fa",
        "e4",
        # hex without a digit, or shorter than 8 characters
        "deadbeef",
        "facade",
        "cafebabe",
        "abc1234",
        # 15 characters is too short for a token
        "abcdefghijklm12",
        # 16 or more characters, but no digit or no letter
        "application-settings",
        "----------------",
        # characters outside the rules
        "2024-01-31",
        "12.json",
        "-42",
        "1.5",
        "jquery-3.6.0.min.js",
        "١٢٣",  # Arabic-Indic digits are not ASCII
        "",
    ],
)
def test_id_segment_negative(segment):
    assert not is_id_segment(segment)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/users/12345", "/users/{id}"),
        ("/users/12345/posts/67890", "/users/{id}/posts/{id}"),
        ("/orders/550e8400-e29b-41d4-a716-446655440000", "/orders/{id}"),
        ("/blobs/da39a3ee5e6b4b0d3255bfef95601890afd80709", "/blobs/{id}"),
        ("/sessions/dGhpcyBpcyBhIHRva2VuMQ/close", "/sessions/{id}/close"),
        ("/api/v1/healthz", "/api/v1/healthz"),
        ("/api/v2/users/7", "/api/v2/users/{id}"),
        ("/42", "/{id}"),
        ("/", "/"),
        # Segments are decoded before the rules apply.
        ("/users/%31%32%33", "/users/{id}"),
    ],
)
def test_heuristic_labels(target, expected):
    mapper = EndpointMapper()

    assert mapper.endpoint(target) == expected


# ---------------------------------------------------------------------------
# Normalisation and targets that are not paths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?x=1", "/a/b"),
        ("/a/b?", "/a/b"),
        ("/a/b#frag", "/a/b"),
        ("/a/b#frag?x=1", "/a/b"),
        ("/a/b?x=1#frag", "/a/b"),
        ("//a", "/a"),
        ("/a//b///c", "/a/b/c"),
        ("/a/b/", "/a/b"),
        ("/a/b//", "/a/b"),
        ("/", "/"),
        ("//", "/"),
        ("/?x=1", "/"),
        ("", "/"),
        ("?x=1", "/"),
        ("a/b", "/a/b"),
        # Percent-decoding happens once.
        ("/a%20b", "/a b"),
        ("/%41%42", "/AB"),
        ("/a%2541", "/a%41"),
        # Invalid escapes stay as they are.
        ("/a%zzb", "/a%zzb"),
        ("/a%", "/a%"),
        ("/a%4", "/a%4"),
        # Invalid UTF-8 after decoding becomes U+FFFD.
        ("/a%ff", "/a\ufffd"),
        # %2F stays inside its segment and is encoded again in the label.
        ("/files/a%2Fb", "/files/a%2Fb"),
        # Absolute-form is reduced to its path.
        ("http://example.com/a/b?x=1", "/a/b"),
        ("https://user@example.com:8443//a/", "/a"),
        ("HTTP://example.com", "/"),
        ("http://example.com?x=1", "/"),
        ("http://[::1]:8080/a", "/a"),
        # Dot segments are not resolved.
        ("/a/../b", "/a/../b"),
    ],
)
def test_normalisation(target, expected):
    mapper = EndpointMapper(unmatched="path")

    assert mapper.endpoint(target) == expected


@pytest.mark.parametrize("unmatched", ["heuristic", "path", "wildcard", "drop"])
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("*", "*"),
        ("example.com:443", "{authority}"),
        ("10.0.0.1:8443", "{authority}"),
        ("[2001:db8::1]:443", "{authority}"),
        ("localhost:80", "{authority}"),
    ],
)
def test_fixed_labels(unmatched, target, expected):
    mapper = EndpointMapper(unmatched=unmatched)

    assert mapper.endpoint(target) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # A colon without a numeric port is not authority-form.
        ("example.com:https", "/example.com:https"),
        ("a:b/c", "/a:b/c"),
        ("/*", "/*"),
    ],
)
def test_not_authority_form(target, expected):
    mapper = EndpointMapper(unmatched="path")

    assert mapper.endpoint(target) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?x=1", "/a/b"),
        ("/a//b/", "/a//b/"),
        ("/a%20b", "/a%20b"),
        ("/a#frag", "/a"),
        ("http://example.com/a/b?x=1", "/a/b"),
        ("http://example.com", "/"),
        ("*", "*"),
        ("example.com:443", "example.com:443"),
        ("", ""),
    ],
)
def test_path_strips_query_only(target, expected):
    mapper = EndpointMapper()

    assert mapper.path(target) == expected


# ---------------------------------------------------------------------------
# Unmatched modes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unmatched", "target", "expected"),
    [
        ("heuristic", "/users/42", "/users/{id}"),
        ("path", "/users/42", "/users/42"),
        ("path", "//users/42/", "/users/42"),
        ("wildcard", "/users/42", "/*"),
        ("wildcard", "/", "/*"),
        ("drop", "/users/42", None),
        ("drop", "/", None),
        # Templates apply before the mode in every mode.
        ("wildcard", "/jobs/42", "/jobs/{id}"),
        ("drop", "/jobs/42", "/jobs/{id}"),
    ],
)
def test_unmatched_modes(unmatched, target, expected):
    mapper = EndpointMapper(["/jobs/{id}"], unmatched=unmatched)

    assert mapper.endpoint(target) == expected


def test_drop_mode_cached_result():
    mapper = EndpointMapper(unmatched="drop")

    assert mapper.endpoint("/users/42") is None
    assert mapper.endpoint("/users/42") is None
    assert mapper.endpoint_map() == {}


# ---------------------------------------------------------------------------
# Cardinality limit
# ---------------------------------------------------------------------------


def test_limit_sends_new_labels_to_overflow():
    mapper = EndpointMapper(unmatched="path", max_endpoints=3)

    assert [mapper.endpoint(f"/p{i}") for i in range(3)] == ["/p0", "/p1", "/p2"]
    assert mapper.overflow_total == 0

    assert mapper.endpoint("/p3") == "/{other}"
    assert mapper.endpoint("/p4") == "/{other}"
    assert mapper.overflow_total == 2

    # Labels admitted before the limit keep working.
    assert mapper.endpoint("/p1") == "/p1"
    assert mapper.endpoint("/p1/") == "/p1"
    assert mapper.overflow_total == 2


def test_limit_counts_every_overflowing_call():
    mapper = EndpointMapper(unmatched="path", max_endpoints=1)
    mapper.endpoint("/a")

    for _ in range(5):
        assert mapper.endpoint("/b") == "/{other}"  # the first call misses, the rest hit the cache

    assert mapper.overflow_total == 5


def test_limit_counts_labels_not_paths():
    mapper = EndpointMapper(max_endpoints=1)

    labels = {mapper.endpoint(f"/users/{i}") for i in range(50)}

    assert labels == {"/users/{id}"}
    assert mapper.overflow_total == 0


def test_limit_ignores_template_and_fixed_labels():
    mapper = EndpointMapper(["/jobs/{id}", "/nodes"], max_endpoints=1)

    assert mapper.endpoint("/jobs/1") == "/jobs/{id}"
    assert mapper.endpoint("/nodes") == "/nodes"
    assert mapper.endpoint("*") == "*"
    assert mapper.endpoint("example.com:443") == "{authority}"
    assert mapper.endpoint("/first") == "/first"
    assert mapper.endpoint("/second") == "/{other}"
    # Templates still match after the limit is reached.
    assert mapper.endpoint("/jobs/2") == "/jobs/{id}"
    assert mapper.overflow_total == 1


def test_limit_wildcard_mode_never_overflows():
    mapper = EndpointMapper(unmatched="wildcard", max_endpoints=1)

    labels = {mapper.endpoint(f"/path{i}") for i in range(20)}

    assert labels == {"/*"}
    assert mapper.overflow_total == 0


def test_limit_custom_overflow_label():
    mapper = EndpointMapper(unmatched="path", max_endpoints=1, overflow_label="OVERFLOW")
    mapper.endpoint("/a")

    assert mapper.endpoint("/b") == "OVERFLOW"
    assert mapper.endpoint_map() == {"/a": "/a", "/b": "OVERFLOW"}


def test_limit_logs_warning_once(caplog):
    mapper = EndpointMapper(unmatched="path", max_endpoints=2)

    with caplog.at_level(logging.WARNING, logger="netmon.routes"):
        for i in range(10):
            mapper.endpoint(f"/p{i}")

    warnings = [r for r in caplog.records if r.name == "netmon.routes"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "--max-endpoints" in warnings[0].getMessage()
    assert "2 distinct labels" in warnings[0].getMessage()
    assert "/{other}" in warnings[0].getMessage()


def test_random_garbage_paths_stay_bounded():
    rng = random.Random(20240131)
    alphabet = [chr(c) for c in range(0x21, 0x7F)] + ["%", "/", "é", "\x00", " "]
    mapper = EndpointMapper(max_endpoints=100)

    labels = set()
    for _ in range(5_000):
        length = rng.randint(1, 40)
        target = "/" + "".join(rng.choice(alphabet) for _ in range(length))
        labels.add(mapper.endpoint(target))

    assert len(labels) <= 101
    assert "/{other}" in labels
    assert mapper.overflow_total > 0


# ---------------------------------------------------------------------------
# Cache and endpoint_map
# ---------------------------------------------------------------------------


def test_endpoint_map_records_raw_paths():
    mapper = EndpointMapper(["/jobs/{id}"])
    mapper.endpoint("/jobs/1?x=2")
    mapper.endpoint("/users/7/")

    assert mapper.endpoint_map() == {"/jobs/1": "/jobs/{id}", "/users/7/": "/users/{id}"}


def test_endpoint_map_is_bounded():
    mapper = EndpointMapper(["/nodes/{id}/heartbeat"])

    for i in range(CACHE_SIZE + 500):
        mapper.endpoint(f"/nodes/{i}/heartbeat")

    mapping = mapper.endpoint_map()
    assert len(mapping) == CACHE_SIZE
    # The oldest entries are evicted first.
    assert "/nodes/0/heartbeat" not in mapping
    assert f"/nodes/{CACHE_SIZE + 499}/heartbeat" in mapping


def test_long_targets_are_mapped_but_not_cached():
    mapper = EndpointMapper(unmatched="path", max_endpoints=1)
    long_target = "/" + "a" * MAX_CACHED_TARGET_LENGTH

    assert mapper.endpoint(long_target) == long_target
    assert mapper.endpoint(long_target) == long_target
    assert mapper.endpoint_map() == {}
    assert mapper.overflow_total == 0


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
    ],
)  # fmt: skip
def test_standard_method_unchanged(method):
    assert normalize_method(method) == method


@pytest.mark.parametrize(
    "method", ["get", "Get", "PURGE", "SEARCH", "BREW", "", "GET ", "\x16\x03"]
)
def test_unknown_method_becomes_other(method):
    assert normalize_method(method) == "OTHER"


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message_part"),
    [
        ("jobs/{id}", "must start with '/'"),
        ("", "must start with '/'"),
        ("/static/*/x", "'*' must be the whole last segment"),
        ("/static*", "'*' must be the whole last segment"),
        ("/*/x", "'*' must be the whole last segment"),
        ("/jobs/{id", "unbalanced braces"),
        ("/jobs/id}", "unbalanced braces"),
        ("/jobs/{{id}}", "unbalanced braces"),
        ("/jobs/{a{b}}", "unbalanced braces"),
        ("/jobs/{}", "empty parameter name"),
        (b"/jobs", "expected a string"),
        (None, "expected a string"),
    ],
)
def test_invalid_template_raises(template, message_part):
    with pytest.raises(RouteConfigError) as excinfo:
        EndpointMapper([template])

    assert message_part in str(excinfo.value)
    assert repr(template) in str(excinfo.value)


def test_conflicting_templates_raise():
    with pytest.raises(RouteConfigError) as excinfo:
        EndpointMapper(["/jobs/{id}", "/jobs/{job_id}"])

    assert "'/jobs/{id}'" in str(excinfo.value)
    assert "'/jobs/{job_id}'" in str(excinfo.value)


@pytest.mark.parametrize(
    ("arguments", "message_part"),
    [
        ({"unmatched": "ignore"}, "invalid unmatched mode 'ignore'"),
        ({"unmatched": "Heuristic"}, "invalid unmatched mode 'Heuristic'"),
        ({"max_endpoints": 0}, "invalid max_endpoints 0"),
        ({"max_endpoints": -5}, "invalid max_endpoints -5"),
        ({"max_endpoints": True}, "invalid max_endpoints True"),
        ({"max_endpoints": "100"}, "invalid max_endpoints '100'"),
        ({"overflow_label": ""}, "invalid overflow_label ''"),
        ({"templates": "/jobs/{id}"}, "got the string '/jobs/{id}'"),
    ],
)
def test_invalid_option_raises(arguments, message_part):
    with pytest.raises(RouteConfigError) as excinfo:
        EndpointMapper(**arguments)

    assert message_part in str(excinfo.value)


def test_route_config_error_is_value_error():
    assert issubclass(RouteConfigError, ValueError)


# ---------------------------------------------------------------------------
# Routes files (TOML)
# ---------------------------------------------------------------------------


def test_routes_file_loads(tmp_path):
    path = tmp_path / "routes.toml"
    path.write_text(
        'routes = ["/jobs", "/jobs/{id}"]\n'
        'unmatched = "path"\n'
        "max_endpoints = 50\n"
        'overflow_label = "other"\n'
    )

    arguments = load_routes_file(path)

    assert arguments == {
        "templates": ["/jobs", "/jobs/{id}"],
        "unmatched": "path",
        "max_endpoints": 50,
        "overflow_label": "other",
    }
    mapper = EndpointMapper(**arguments)
    assert mapper.endpoint("/jobs/3") == "/jobs/{id}"


def test_routes_file_only_sets_present_keys(tmp_path):
    path = tmp_path / "routes.toml"
    path.write_text('unmatched = "drop"\n')

    assert load_routes_file(str(path)) == {"templates": [], "unmatched": "drop"}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/jobs", "/jobs"),
        ("/jobs/17", "/jobs/{id}"),
        ("/nodes", "/nodes"),
        ("/nodes/register", "/nodes/register"),
        ("/nodes/n-0042/heartbeat", "/nodes/{id}/heartbeat"),
    ],
)
def test_example_scheduler_routes(target, expected):
    mapper = EndpointMapper(**load_routes_file(EXAMPLE_ROUTES))

    assert mapper.endpoint(target) == expected


def test_example_register_beats_param_template():
    arguments = load_routes_file(EXAMPLE_ROUTES)
    arguments["templates"] = arguments["templates"] + ["/nodes/{id}"]
    mapper = EndpointMapper(**arguments)

    assert mapper.endpoint("/nodes/register") == "/nodes/register"
    assert mapper.endpoint("/nodes/n-0042") == "/nodes/{id}"


@pytest.mark.parametrize(
    ("content", "message_part"),
    [
        ('routes = ["/jobs"]\nmax_endpoint = 5\n', "unknown key 'max_endpoint'"),
        ('routes = "/jobs"\n', "invalid 'routes'"),
        ("routes = [1, 2]\n", "invalid 'routes'"),
        ('routes = ["jobs"]\n', "invalid route template 'jobs'"),
        ('routes = ["/a/*/b"]\n', "invalid route template '/a/*/b'"),
        ('unmatched = "none"\n', "invalid unmatched mode 'none'"),
        ("max_endpoints = 0\n", "invalid max_endpoints 0"),
        ('max_endpoints = "10"\n', "invalid max_endpoints '10'"),
        ("routes = [\n", "invalid TOML"),
    ],
)
def test_routes_file_errors_name_file(tmp_path, content, message_part):
    path = tmp_path / "routes.toml"
    path.write_text(content)

    with pytest.raises(RouteConfigError) as excinfo:
        load_routes_file(path)

    assert message_part in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_routes_file_missing_raises(tmp_path):
    path = tmp_path / "missing.toml"

    with pytest.raises(RouteConfigError) as excinfo:
        load_routes_file(path)

    assert "cannot read routes file" in str(excinfo.value)
    assert str(path) in str(excinfo.value)


# ---------------------------------------------------------------------------
# OpenAPI documents
# ---------------------------------------------------------------------------

OPENAPI_YAML = """\
openapi: 3.0.3
info: {title: Scheduler, version: "1"}
servers:
  - url: https://scheduler.example.com/api/v1
paths:
  /jobs:
    get: {responses: {"200": {description: ok}}}
    post: {responses: {"201": {description: created}}}
  /jobs/{id}:
    get: {responses: {"200": {description: ok}}}
  /nodes/{id}/heartbeat:
    post: {responses: {"204": {description: ok}}}
  x-internal: {}
"""


def test_openapi_yaml_with_server_prefix(tmp_path):
    path = tmp_path / "openapi.yaml"
    path.write_text(OPENAPI_YAML)

    templates = load_openapi(path)

    assert templates == ["/api/v1/jobs", "/api/v1/jobs/{id}", "/api/v1/nodes/{id}/heartbeat"]
    mapper = EndpointMapper(templates)
    assert mapper.endpoint("/api/v1/jobs/9") == "/api/v1/jobs/{id}"


def test_openapi_json_without_servers(tmp_path):
    path = tmp_path / "openapi.json"
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {"/": {}, "/jobs": {}, "/jobs/{id}": {}},
    }
    path.write_text(json.dumps(document))

    assert load_openapi(str(path)) == ["/", "/jobs", "/jobs/{id}"]


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ([{"url": "/"}], ["/jobs"]),
        ([{"url": "https://example.com"}], ["/jobs"]),
        ([{"url": "https://example.com/"}], ["/jobs"]),
        ([{"url": "/v2/"}], ["/v2/jobs"]),
        ([{"url": "v2"}], ["/v2/jobs"]),
        # Two servers with the same path give one template.
        ([{"url": "https://a.example.com/v1"}, {"url": "http://localhost:8080/v1"}], ["/v1/jobs"]),
        ([{"url": "https://example.com"}, {"url": "/v1"}], ["/jobs", "/v1/jobs"]),
        (
            [
                {
                    "url": "https://{host}/{base}",
                    "variables": {"host": {"default": "x.example.com"}, "base": {"default": "api"}},
                }
            ],
            ["/api/jobs"],
        ),
        # A variable without a default stays a parameter.
        ([{"url": "https://example.com/{version}"}], ["/{version}/jobs"]),
    ],
)
def test_openapi_server_prefixes(tmp_path, servers, expected):
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps({"openapi": "3.0.0", "servers": servers, "paths": {"/jobs": {}}}))

    assert load_openapi(path) == expected


def test_openapi_path_item_servers_override(tmp_path):
    path = tmp_path / "openapi.json"
    document = {
        "openapi": "3.0.0",
        "servers": [{"url": "/v1"}],
        "paths": {"/jobs": {}, "/upload": {"servers": [{"url": "https://files.example.com/f"}]}},
    }
    path.write_text(json.dumps(document))

    assert load_openapi(path) == ["/v1/jobs", "/f/upload"]


def test_openapi_mixed_segment_template(tmp_path):
    path = tmp_path / "openapi.yaml"
    path.write_text("openapi: 3.0.0\npaths:\n  /reports/{id}.{format}: {}\n  /reports/{id}: {}\n")

    templates = load_openapi(path)

    assert templates == ["/reports/{id}.{format}", "/reports/{id}"]
    mapper = EndpointMapper(templates)
    assert mapper.endpoint("/reports/7.csv") == "/reports/{id}.{format}"
    assert mapper.endpoint("/reports/7") == "/reports/{id}"


def test_openapi_swagger2_base_path(tmp_path):
    path = tmp_path / "swagger.yaml"
    path.write_text('swagger: "2.0"\nbasePath: /api\npaths:\n  /jobs/{id}: {}\n')

    assert load_openapi(path) == ["/api/jobs/{id}"]


@pytest.mark.parametrize(
    ("file_name", "content", "message_part"),
    [
        ("a.yaml", "just a string\n", "expected a mapping"),
        ("a.yaml", "info: {title: t}\npaths: {/a: {}}\n", "is not an OpenAPI 3 document"),
        ("a.yaml", "openapi: 2.0\npaths: {/a: {}}\n", "is not an OpenAPI 3 document"),
        ("a.yaml", "openapi: 3.0.0\n", "has no 'paths'"),
        ("a.yaml", "openapi: 3.0.0\npaths: {}\n", "has no 'paths'"),
        ("a.yaml", "openapi: 3.0.0\npaths: {jobs: {}}\n", "invalid path 'jobs'"),
        ("a.yaml", "openapi: 3.0.0\npaths: {'/a/{id': {}}\n", "unbalanced braces"),
        ("a.yaml", "openapi: 3.0.0\npaths: [/a\n", "invalid OpenAPI file"),
        ("a.json", '{"openapi": "3.0.0",', "invalid OpenAPI file"),
    ],
)
def test_openapi_errors_name_file(tmp_path, file_name, content, message_part):
    path = tmp_path / file_name
    path.write_text(content)

    with pytest.raises(RouteConfigError) as excinfo:
        load_openapi(path)

    assert message_part in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_openapi_missing_file_raises(tmp_path):
    path = tmp_path / "missing.yaml"

    with pytest.raises(RouteConfigError) as excinfo:
        load_openapi(path)

    assert str(path) in str(excinfo.value)
