"""Map HTTP request targets to endpoint labels with bounded cardinality.

Metrics are labelled by endpoint, and labelling by raw path would create one time
series per id (``/nodes/<id>/heartbeat`` for 5,000 nodes is 5,000 series).
`EndpointMapper.endpoint` turns a request target into a label in four steps:

1. Targets that are not paths get fixed labels. ``*`` (as in ``OPTIONS *``) stays
   ``*``, and authority-form (``host:443``, sent with CONNECT) becomes ``{authority}``.
2. The path is normalised and matched against the route templates. The label is
   the text of the most specific matching template.
3. A path that no template matches gets its label from the ``unmatched`` policy:
   ``heuristic``, ``path``, ``wildcard`` or ``drop``.
4. Labels from step 3 are capped at ``max_endpoints`` distinct values. Once the cap
   is reached, every new value becomes ``overflow_label``.

docs/routes.md describes the configuration and the measured cost per call.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from collections import OrderedDict
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

logger = logging.getLogger("netmon.routes")

UNMATCHED_MODES = ("heuristic", "path", "wildcard", "drop")

# Methods defined by RFC 9110 and RFC 5789 (PATCH), plus the WebDAV methods of RFC 4918.
STANDARD_METHODS = frozenset(
    {
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
    }
)
OTHER_METHOD = "OTHER"

ASTERISK_LABEL = "*"
AUTHORITY_LABEL = "{authority}"
WILDCARD_LABEL = "/*"
ID_PLACEHOLDER = "{id}"

# Maximum number of raw paths whose labels are cached. When the cache is full, the
# oldest entry is evicted (first in, first out).
CACHE_SIZE = 4096
# Targets longer than this are mapped on every call and never cached, so that cache
# keys take at most CACHE_SIZE * MAX_CACHED_TARGET_LENGTH characters.
MAX_CACHED_TARGET_LENGTH = 2048

# Sentinels for "the overflow label" and "not in the cache". The overflow label is
# cached as a sentinel so that a cache hit can still increment overflow_total.
_OVERFLOW = object()
_MISSING = object()

_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# host:port or [IPv6]:port, the authority-form that CONNECT uses (RFC 9112, section 3.2).
_AUTHORITY_FORM = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s/?#@\[\]:]+):[0-9]+")


class RouteConfigError(ValueError):
    """Invalid route configuration: a template, an option or a routes file."""


def normalize_method(method: str) -> str:
    """Return the method if it is standard, otherwise ``"OTHER"``.

    Methods are case-sensitive (RFC 9110, section 9.1), so ``"get"`` is ``"OTHER"``.
    Mapping unknown methods to one value keeps the ``method`` label bounded.
    """
    if method in STANDARD_METHODS:
        return method
    return OTHER_METHOD


# ---------------------------------------------------------------------------
# Request targets and path normalisation
# ---------------------------------------------------------------------------


def _strip_query_and_fragment(target: str) -> str:
    query = target.find("?")
    if query >= 0:
        target = target[:query]
    fragment = target.find("#")  # a "#" before the "?" starts the fragment
    if fragment >= 0:
        target = target[:fragment]
    return target


def _path_of_absolute_form(target: str, authority_start: int) -> str:
    """Return the path of ``scheme://authority/path``, or ``/`` if it has none."""
    slash = target.find("/", authority_start)
    if slash < 0:
        return "/"
    return target[slash:]


def split_path(path: str) -> list[str]:
    """Split a path into decoded, non-empty segments.

    Each segment is percent-decoded once, as UTF-8. Invalid escapes such as ``%zz``
    stay as they are, and bytes that are not valid UTF-8 become U+FFFD. The path is
    split before decoding, so ``%2F`` stays inside its segment, as RFC 3986 requires.
    Empty segments are dropped, which collapses ``//`` and removes a trailing slash.
    Dot segments (``.`` and ``..``) are kept as they are.
    """
    segments = []
    for segment in path.split("/"):
        if not segment:
            continue
        if "%" in segment:
            segment = unquote(segment, errors="replace")
        segments.append(segment)
    return segments


def _join_segments(segments: list[str]) -> str:
    # A "/" decoded from %2F is encoded again, so that it does not read as a separator.
    return "/" + "/".join(segment.replace("/", "%2F") for segment in segments)


# ---------------------------------------------------------------------------
# Heuristic for unmatched paths
# ---------------------------------------------------------------------------

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_DIGIT = re.compile(r"[0-9]")
_LETTER = re.compile(r"[A-Za-z]")

MIN_SHORT_HEX_LENGTH = 8
MIN_LONG_HEX_LENGTH = 16
MIN_TOKEN_LENGTH = 16


def is_id_segment(segment: str) -> bool:
    """Return whether a decoded path segment looks like an identifier.

    A segment is an id if it matches one of these rules:

    - decimal number: ASCII digits only, such as ``42`` or ``0007``;
    - UUID: 8-4-4-4-12 hex digits with hyphens, either case;
    - long hex: 16 or more hex digits (``0-9a-fA-F``);
    - short hex: 8 to 15 hex digits with at least one digit 0-9 and at least one
      letter a-f, such as ``5f3a9c01`` (``deadbeef`` and ``facade`` stay);
    - token: 16 or more characters from ``A-Za-z0-9-_`` with at least one letter
      and at least one digit, such as base64url ids or ``release-notes-2024``.

    Everything else stays, for example ``v1``, ``api``, ``healthz``, ``deadbeef``,
    ``2024-01-31`` and ``12.json``.
    """
    if not segment.isascii():
        return False
    if segment.isdigit():
        return True

    length = len(segment)
    if length < MIN_SHORT_HEX_LENGTH:
        return False
    if _UUID.fullmatch(segment):
        return True
    if _HEX.fullmatch(segment):
        # Not all digits (checked above), so the segment contains a letter a-f.
        if length >= MIN_LONG_HEX_LENGTH or _DIGIT.search(segment):
            return True

    return (
        length >= MIN_TOKEN_LENGTH
        and _TOKEN.fullmatch(segment) is not None
        and _DIGIT.search(segment) is not None
        and _LETTER.search(segment) is not None
    )


# ---------------------------------------------------------------------------
# Route templates and the segment trie
# ---------------------------------------------------------------------------

_LITERAL = "literal"
_PARAM = "param"
_PATTERN = "pattern"  # literal text mixed with parameters, such as "{name}.json"
_WILDCARD = "wildcard"

# Zero or more "{...}" groups with text around them, and no nested or stray braces.
_BALANCED_BRACES = re.compile(r"(?:[^{}]*\{[^{}]*\})*[^{}]*")
_WHOLE_PARAM = re.compile(r"\{[^{}]+\}")
_PARAM_GROUP = re.compile(r"(\{[^{}]+\})")


class _TemplateSegment:
    __slots__ = ("kind", "key", "regex", "literal_length")

    def __init__(
        self,
        kind: str,
        key: str = "",
        regex: re.Pattern[str] | None = None,
        literal_length: int = 0,
    ) -> None:
        self.kind = kind
        self.key = key  # decoded text of a literal, regex source of a pattern
        self.regex = regex
        self.literal_length = literal_length  # characters outside "{...}" in a pattern


def parse_template(template: str) -> list[_TemplateSegment]:
    """Parse a route template into segments, raising RouteConfigError if it is invalid.

    A segment is literal text, a parameter ``{name}`` that matches one whole segment,
    literal text with parameters (``{name}.json``), or ``*``, which must be the last
    segment and matches any remainder of the path, including none. Literal text is
    percent-decoded like request paths, and empty segments are ignored.
    """
    if not isinstance(template, str):
        raise RouteConfigError(f"invalid route template {template!r}: expected a string")
    if not template.startswith("/"):
        raise RouteConfigError(
            f"invalid route template {template!r}: it must start with '/', as in '/jobs/{{id}}'"
        )

    if "?" in template or "#" in template:
        raise RouteConfigError(
            f"invalid route template {template!r}: a template matches paths only, "
            "and netmon removes the query and fragment before matching"
        )

    raw_segments = [segment for segment in template.split("/") if segment]
    segments = []
    for index, raw in enumerate(raw_segments):
        if "*" in raw:
            if raw != "*" or index != len(raw_segments) - 1:
                raise RouteConfigError(
                    f"invalid route template {template!r}: '*' must be the whole last "
                    "segment, as in '/static/*'"
                )
            segments.append(_TemplateSegment(_WILDCARD))
        elif "{" not in raw and "}" not in raw:
            segments.append(_TemplateSegment(_LITERAL, key=unquote(raw, errors="replace")))
        else:
            segments.append(_parse_param_segment(template, raw))
    return segments


def _parse_param_segment(template: str, raw: str) -> _TemplateSegment:
    if not _BALANCED_BRACES.fullmatch(raw):
        raise RouteConfigError(
            f"invalid route template {template!r}: unbalanced braces in segment {raw!r}. "
            "Write a parameter as '{name}'."
        )
    if "{}" in raw:
        raise RouteConfigError(
            f"invalid route template {template!r}: empty parameter name in segment {raw!r}. "
            "Write a parameter as '{name}'."
        )
    if _WHOLE_PARAM.fullmatch(raw):
        return _TemplateSegment(_PARAM)

    parts = []
    literal_length = 0
    for part in _PARAM_GROUP.split(raw):
        if _WHOLE_PARAM.fullmatch(part):
            parts.append(".+?")
        elif part:
            text = unquote(part, errors="replace")
            literal_length += len(text)
            parts.append(re.escape(text))
    source = "".join(parts)
    return _TemplateSegment(
        _PATTERN, key=source, regex=re.compile(source, re.DOTALL), literal_length=literal_length
    )


class _Node:
    """Trie node for one segment position, shared by templates with the same segments up to it."""

    __slots__ = ("literals", "patterns", "param", "label", "wildcard_label")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        # (literal length, regex, child) triples, most literal characters first.
        self.patterns: list[tuple[int, re.Pattern[str], _Node]] = []
        self.param: _Node | None = None
        self.label: str | None = None  # the template that ends at this node
        self.wildcard_label: str | None = None  # the template that ends with "*" here


class _RouteTrie:
    """Route templates in a trie of path segments.

    Matching visits each trie node at most once, and a literal segment costs one
    dict lookup, so the cost depends on the path and on how many templates share
    its prefix, but not on the total number of templates.
    """

    def __init__(self) -> None:
        self.root = _Node()
        self.empty = True

    def add(self, template: str) -> None:
        node = self.root
        for segment in parse_template(template):
            if segment.kind == _WILDCARD:
                node.wildcard_label = self._check_conflict(node.wildcard_label, template)
                self.empty = False
                return
            node = self._child(node, segment)
        node.label = self._check_conflict(node.label, template)
        self.empty = False

    @staticmethod
    def _check_conflict(existing: str | None, template: str) -> str:
        if existing is not None and existing != template:
            raise RouteConfigError(
                f"route templates {existing!r} and {template!r} match the same paths. "
                "Keep one of them."
            )
        return template

    def _child(self, node: _Node, segment: _TemplateSegment) -> _Node:
        if segment.kind == _LITERAL:
            return node.literals.setdefault(segment.key, _Node())
        if segment.kind == _PARAM:
            if node.param is None:
                node.param = _Node()
            return node.param

        for _, regex, child in node.patterns:
            if regex.pattern == segment.key:
                return child
        child = _Node()
        node.patterns.append((segment.literal_length, segment.regex, child))
        # More literal characters means more specific. sort() is stable, so patterns
        # with equal literal length keep the order of the templates.
        node.patterns.sort(key=lambda entry: -entry[0])
        return child

    def match(self, segments: list[str]) -> str | None:
        """Return the label of the most specific template that matches, or None.

        At each segment a literal beats a pattern, which beats ``{param}``, which
        beats ``*``. The search is depth-first in that order and backtracks when a
        branch fails deeper in the path, so the first match found is the most
        specific one, compared segment by segment from the left.
        """
        return self._match(self.root, segments, 0)

    def _match(self, node: _Node, segments: list[str], index: int) -> str | None:
        if index == len(segments):
            if node.label is not None:
                return node.label
            return node.wildcard_label

        segment = segments[index]
        child = node.literals.get(segment)
        if child is not None:
            label = self._match(child, segments, index + 1)
            if label is not None:
                return label

        for _, regex, child in node.patterns:
            if regex.fullmatch(segment):
                label = self._match(child, segments, index + 1)
                if label is not None:
                    return label

        if node.param is not None:
            label = self._match(node.param, segments, index + 1)
            if label is not None:
                return label

        return node.wildcard_label


# ---------------------------------------------------------------------------
# The mapper
# ---------------------------------------------------------------------------


class EndpointMapper:
    """Mapping from request targets to endpoint labels with bounded cardinality.

    ``templates`` are route templates such as ``/nodes/{id}/heartbeat`` or
    ``/static/*``, and each template's text is its label. ``unmatched`` sets the label
    of a path that no template matches:

    - ``heuristic``: the normalised path with id-like segments replaced by ``{id}``
      (see `is_id_segment`);
    - ``path``: the normalised path;
    - ``wildcard``: ``/*`` for every such path;
    - ``drop``: None. The caller then skips the per-endpoint metrics for the request
      but still counts its bytes in the aggregate metrics.

    Only labels from the ``heuristic`` and ``path`` policies count against
    ``max_endpoints``. Template labels, ``/*``, ``*``, ``{authority}`` and the
    overflow label are bounded by the configuration and never count, so the
    ``endpoint`` label has at most ``max_endpoints + len(templates) + 4`` values.

    NOTE: not thread-safe. Call one mapper from one thread.
    """

    def __init__(
        self,
        templates=(),
        unmatched="heuristic",
        max_endpoints=100,
        overflow_label="/{other}",
    ) -> None:
        if isinstance(templates, (str, bytes)):
            raise RouteConfigError(
                f"templates must be a list of route templates, got the string {templates!r}"
            )
        if unmatched not in UNMATCHED_MODES:
            raise RouteConfigError(
                f"invalid unmatched mode {unmatched!r}: expected one of "
                f"{', '.join(UNMATCHED_MODES)}"
            )
        is_integer = isinstance(max_endpoints, int) and not isinstance(max_endpoints, bool)
        if not is_integer or max_endpoints < 1:
            raise RouteConfigError(
                f"invalid max_endpoints {max_endpoints!r}: expected a positive integer"
            )
        if not isinstance(overflow_label, str) or not overflow_label:
            raise RouteConfigError(
                f"invalid overflow_label {overflow_label!r}: expected a non-empty string"
            )

        self.templates = tuple(templates)
        self._trie = _RouteTrie()
        for template in self.templates:
            self._trie.add(template)

        self.unmatched = unmatched
        self.max_endpoints = max_endpoints
        self.overflow_label = overflow_label
        self.overflow_total = 0  # calls that returned the overflow label
        self._counted_labels: set[str] = set()
        self._limit_logged = False
        self._cache: OrderedDict[str, object] = OrderedDict()

    def endpoint(self, target: str) -> str | None:
        """Map a raw request target to its endpoint label.

        ``target`` is the request target decoded from bytes as latin-1. It may carry
        a query or fragment and may be origin-form, absolute-form, ``*`` or
        authority-form. Returns None only in ``drop`` mode for an unmatched path.
        Every call that returns the overflow label increments ``overflow_total``.
        """
        if "?" in target or "#" in target:
            target = _strip_query_and_fragment(target)

        label = self._cache.get(target, _MISSING)
        if label is _MISSING:
            label = self._resolve(target)
            if len(target) <= MAX_CACHED_TARGET_LENGTH:
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.popitem(last=False)
                self._cache[target] = label

        if label is _OVERFLOW:
            self.overflow_total += 1
            return self.overflow_label
        return label  # type: ignore[return-value]

    def path(self, target: str) -> str:
        """Return the target without query and fragment, and absolute-form reduced to its path.

        Nothing else is normalised: percent-escapes, repeated and trailing slashes
        stay. ``*`` and authority-form targets are returned as they are.
        """
        target = _strip_query_and_fragment(target)
        match = _ABSOLUTE_FORM.match(target)
        if match:
            return _path_of_absolute_form(target, match.end())
        return target

    def endpoint_map(self) -> dict[str, str]:
        """Return the cached raw paths and their labels.

        Keys are targets without query and fragment. The map contains at most
        CACHE_SIZE (4096) entries, the most recently added ones, and leaves out
        targets longer than MAX_CACHED_TARGET_LENGTH and paths dropped in ``drop``
        mode.
        """
        mapping = {}
        for target, label in self._cache.items():
            if label is _OVERFLOW:
                mapping[target] = self.overflow_label
            elif label is not None:
                mapping[target] = label
        return mapping

    def _resolve(self, target: str) -> object:
        """Map a target whose query is already removed to its label, _OVERFLOW or None."""
        if target == "*":
            return ASTERISK_LABEL

        if target.startswith("/"):
            path = target
        else:
            match = _ABSOLUTE_FORM.match(target)
            if match:
                path = _path_of_absolute_form(target, match.end())
            elif _AUTHORITY_FORM.fullmatch(target):
                return AUTHORITY_LABEL
            else:
                path = "/" + target  # also maps the empty target to "/"

        segments = split_path(path)
        if not self._trie.empty:
            label = self._trie.match(segments)
            if label is not None:
                return label

        if self.unmatched == "heuristic":
            replaced = [ID_PLACEHOLDER if is_id_segment(s) else s for s in segments]
            return self._count(_join_segments(replaced))
        if self.unmatched == "path":
            return self._count(_join_segments(segments))
        if self.unmatched == "wildcard":
            return WILDCARD_LABEL
        return None  # drop

    def _count(self, label: str) -> object:
        """Return the label if it is known or fits under max_endpoints, otherwise _OVERFLOW."""
        if label in self._counted_labels:
            return label
        if len(self._counted_labels) < self.max_endpoints:
            self._counted_labels.add(label)
            return label

        if not self._limit_logged:
            self._limit_logged = True
            logger.warning(
                "endpoint label limit reached: %d distinct labels (--max-endpoints). "
                "New endpoints are labelled %r from now on. Raise --max-endpoints or "
                "add route templates for the paths that contain ids.",
                self.max_endpoints,
                self.overflow_label,
            )
        return _OVERFLOW


# ---------------------------------------------------------------------------
# Configuration files
# ---------------------------------------------------------------------------

# Keys of a routes file and the EndpointMapper arguments that they set.
ROUTES_FILE_KEYS = {
    "routes": "templates",
    "unmatched": "unmatched",
    "max_endpoints": "max_endpoints",
    "overflow_label": "overflow_label",
}


def load_routes_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML routes file and return keyword arguments for EndpointMapper.

    The file may set ``routes`` (a list of templates), ``unmatched``,
    ``max_endpoints`` and ``overflow_label``. The result uses the argument names, so
    ``routes`` becomes ``templates``, and it contains only the keys that the file
    sets, plus ``templates`` (empty if the file sets no routes). Use it as
    ``EndpointMapper(**load_routes_file(path))``, or update it with command-line
    options first. Raises RouteConfigError, naming the file, for a file that cannot
    be read or parsed, an unknown key or an invalid value.
    """
    name = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as err:
        raise RouteConfigError(f"cannot read routes file {name!r}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise RouteConfigError(f"invalid TOML in routes file {name!r}: {err}") from err

    for key in data:
        if key not in ROUTES_FILE_KEYS:
            raise RouteConfigError(
                f"unknown key {key!r} in routes file {name!r}: expected "
                f"{', '.join(ROUTES_FILE_KEYS)}"
            )

    routes = data.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(route, str) for route in routes):
        raise RouteConfigError(
            f"invalid 'routes' in routes file {name!r}: expected a list of "
            f"strings such as [\"/jobs/{{id}}\"], got {routes!r}"
        )

    arguments: dict[str, Any] = {"templates": routes}
    for key, argument in ROUTES_FILE_KEYS.items():
        if key != "routes" and key in data:
            arguments[argument] = data[key]

    # Build a mapper once so that every error names the file.
    try:
        EndpointMapper(**arguments)
    except RouteConfigError as err:
        raise RouteConfigError(f"routes file {name!r}: {err}") from None
    return arguments


def load_openapi(path: str | os.PathLike[str]) -> list[str]:
    """Read route templates from an OpenAPI 3 document in YAML or JSON.

    Returns the keys of ``paths`` in file order, each prefixed with the path of every
    distinct server URL (``https://api.example.com/v1`` gives ``/v1``). Server
    variables take their default values, and ``servers`` in a path item replace the
    top-level ones for that path. Swagger 2.0 documents are accepted too, with
    ``basePath`` as the prefix. Raises RouteConfigError, naming the file, for a file
    that cannot be read or parsed, a document that is not OpenAPI 3 or Swagger 2.0,
    missing ``paths`` or an invalid template.
    """
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as err:
        raise RouteConfigError(f"cannot read OpenAPI file {name!r}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise RouteConfigError(f"cannot read OpenAPI file {name!r}: not UTF-8 text ({err.reason})") from err

    try:
        if name.lower().endswith(".json"):
            document = json.loads(text)
        else:
            document = yaml.safe_load(text)  # YAML 1.1 also reads most JSON
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        # Parser messages span several lines; one line reads better in a CLI error.
        detail = " ".join(str(err).split())
        raise RouteConfigError(f"invalid OpenAPI file {name!r}: {detail}") from err

    if not isinstance(document, dict):
        raise RouteConfigError(
            f"invalid OpenAPI file {name!r}: expected a mapping at the top level"
        )

    version = document.get("openapi")
    is_openapi3 = isinstance(version, str) and version.startswith("3.")
    if is_openapi3:
        prefixes = _server_prefixes(name, document.get("servers"))
    elif document.get("swagger") == "2.0":
        prefixes = [_normalize_prefix(str(document.get("basePath") or ""))]
    else:
        raise RouteConfigError(
            f"{name!r} is not an OpenAPI 3 document: 'openapi' is {version!r}, expected "
            "a version such as '3.0.3'"
        )

    paths = document.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise RouteConfigError(
            f"OpenAPI file {name!r} has no 'paths'. Add path entries, or give the routes "
            "with --route or --routes-file."
        )

    templates: list[str] = []
    for key, item in paths.items():
        if isinstance(key, str) and key.startswith("x-"):
            continue  # specification extension, not a path
        if not isinstance(key, str) or not key.startswith("/"):
            raise RouteConfigError(
                f"invalid path {key!r} in OpenAPI file {name!r}: it must start with '/'"
            )

        item_prefixes = prefixes
        if is_openapi3 and isinstance(item, dict) and item.get("servers"):
            item_prefixes = _server_prefixes(name, item["servers"])

        for prefix in item_prefixes:
            template = prefix + key if key != "/" else prefix or "/"
            if template not in templates:
                templates.append(template)

    for template in templates:
        try:
            parse_template(template)
        except RouteConfigError as err:
            raise RouteConfigError(f"OpenAPI file {name!r}: {err}") from None
    return templates


_SERVER_VARIABLE = re.compile(r"\{([^{}]+)\}")


def _server_prefixes(file_name: str, servers: object) -> list[str]:
    """Return the distinct path prefixes of an OpenAPI ``servers`` list, at least ``[""]``."""
    if not isinstance(servers, list):
        return [""]

    prefixes: list[str] = []
    for server in servers:
        if not isinstance(server, dict) or not isinstance(server.get("url"), str):
            continue
        variables = server.get("variables")
        if not isinstance(variables, dict):
            variables = {}

        def substitute(match: re.Match[str]) -> str:
            variable = variables.get(match.group(1))
            if isinstance(variable, dict) and "default" in variable:
                return str(variable["default"])
            return match.group(0)  # no default: keep "{name}", which matches any segment

        url = _SERVER_VARIABLE.sub(substitute, server["url"])
        try:
            prefix = _normalize_prefix(urlsplit(url).path)
        except ValueError as err:  # urlsplit rejects malformed IPv6 hosts
            raise RouteConfigError(
                f"invalid server URL {server['url']!r} in OpenAPI file {file_name!r}: {err}"
            ) from err
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes or [""]


def _normalize_prefix(path: str) -> str:
    """Turn a base path into a prefix: ``""`` for the root, otherwise ``/a/b``."""
    path = path.strip("/")
    if not path:
        return ""
    return "/" + path
