"""Edge inference: which service names which, and from what evidence.

A value names a host when it is `svc`, `svc:port`, a URL (`http://svc:port/path`,
`mongodb://user:pw@svc:27017/db`, `jdbc:mysql://svc/db`, several hosts after one scheme), a Kubernetes
service name (`svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`), the host option of a `name=value;...`
connection string, or a comma list of those. A bare word without a port or scheme counts only under an
address-like key (`*_HOST`, `*_ADDR`, `*_URL`, `EventBusConnection`, ...), because `MODE=cart` is not a
call, and never when it is a boolean or a quantity (`true`, `30s`); a cluster name counts under any key.
Hosts that match no service are listed as unresolved (single names, cluster names) or external (other
dotted names); no edge is ever invented for them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from release_graph.importer.model import HostRef, ImportedFleet, Reference

_SCHEME = r"(?:[A-Za-z][A-Za-z0-9+.-]*:)+//"
_URL = re.compile(_SCHEME + r"(?P<netloc>[^/?#;\s,]*(?:,(?!" + _SCHEME + r")[^/?#;\s,]*)*)")
_HOST = re.compile(
    r"^(?=[A-Za-z0-9.-]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
_LOCAL_HOSTS = {"localhost", "localhost.localdomain", "ip6-localhost"}
# The container host as seen from a container: `host.docker.internal:5105` reaches whatever publishes host
# port 5105, which on a compose host is another service of the fleet.
HOST_GATEWAYS = {"host.docker.internal", "gateway.docker.internal", "host.containers.internal"}
ADDRESS_WORDS = {
    "HOST", "HOSTS", "HOSTNAME", "ADDR", "ADDRS", "ADDRESS", "ADDRESSES", "URL", "URLS", "URI", "URIS",
    "ENDPOINT", "ENDPOINTS", "SERVER", "SERVERS", "BROKER", "BROKERS", "DSN", "UPSTREAM", "BACKEND",
    # .NET and others name a whole connection string after the connection: `EventBusConnection=rabbitmq`,
    # `ConnectionStrings__orders=...`, `CONNECTIONSTRING=...`.
    "CONNECTION", "CONNECTIONSTRING", "CONNECTIONSTRINGS",
}
# Values that are settings, not names, even under an address-like key (`..._SERVER_TLS_INSECURE=true`).
_NOT_HOSTS = {"true", "false", "yes", "no", "on", "off", "null", "none", "nil"}
_QUANTITY = re.compile(r"^\d+(?:\.\d+)?[a-z]{0,3}$")  # 30s, 512mb, 1.5h
_CLUSTER_SUFFIXES = (".svc", ".svc.cluster.local")
_SECRET_PARTS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL")
_CREDENTIALS_IN_URL = re.compile(r"(?P<prefix>" + _SCHEME + r"[^:@/\s]*):(?P<password>[^@/\s]+)@")
# `Server=db;User Id=sa;Password=...`, `redis:6379,password=...`, `...;SharedAccessKey=...`, `password="..."`.
_CREDENTIAL_OPTION = re.compile(
    r"(?P<prefix>(?:^|[;,\s])(?:password|pwd|passwd|sharedaccesskey|accountkey)\s*=\s*)(?P<password>[^;,\s][^;,]*)",
    re.I,
)
# camelCase and PascalCase keys are words too: `EventBusConnection`, `identityUrl`, `HTTPServer`, `URLs`.
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z]{2,})")


def key_words(key: str) -> list[str]:
    words = [word for part in re.split(r"[-_.]", key) for word in _CAMEL_BOUNDARY.split(part)]
    return [w.upper() for w in words if w]


def is_address_key(key: str) -> bool:
    return any(w in ADDRESS_WORDS for w in key_words(key))


def is_secret_name(name: str) -> bool:
    """Names like DB_PASSWORD, API_KEY, APIKEY, GITHUB_TOKEN hold secrets; their values are never written."""
    upper = name.upper()
    if any(part in upper for part in _SECRET_PARTS):
        return True
    return any(w in ("KEY", "PWD", "PASS") or w.endswith("KEY") for w in key_words(name))


def has_credentials(value: str) -> bool:
    """A password in a URL's user info or in a connection string's options."""
    return bool(_CREDENTIALS_IN_URL.search(value) or _CREDENTIAL_OPTION.search(value))


def mask_credentials(value: str) -> str:
    value = _CREDENTIALS_IN_URL.sub(lambda m: f"{m.group('prefix')}:***@", value)
    return _CREDENTIAL_OPTION.sub(lambda m: f"{m.group('prefix')}***", value)


def _host_port(text: str) -> HostRef | None:
    text = text.strip().rstrip(";)&|'\"").lstrip("('\"")
    if "@" in text:
        text = text.rsplit("@", 1)[1]
    if not text or text.startswith("["):  # IPv6 literals are never service names
        return None
    host, sep, port = text.partition(":")
    if sep and not (port.isdigit() and 0 < int(port) < 65536):
        return None
    if not _HOST.match(host):
        return None
    host = host.lower()
    if host in _LOCAL_HOSTS or host in _NOT_HOSTS or _QUANTITY.match(host):
        return None
    return HostRef(host, int(port) if sep else None)


def is_cluster_name(host: str) -> bool:
    """`zipkin.tracing.svc.cluster.local`, `orders.shop.svc`: a Kubernetes Service name, whatever the key."""
    return host.endswith(_CLUSTER_SUFFIXES)


def hosts_in_value(value: str, key: str) -> tuple[HostRef, ...]:
    """The hosts a configuration value names, in order, without duplicates."""
    found: list[HostRef] = []
    address_key = is_address_key(key)
    for match in _URL.finditer(value):
        for part in match.group("netloc").split(","):
            ref = _host_port(part)
            if ref:
                found.append(ref)
    rest = _URL.sub(" ", value)
    options = connection_string_options(rest)
    if options is not None:
        found.extend(_connection_string_hosts(options))
        return tuple(dict.fromkeys(found))
    for token in re.split(r"[,\s;]+", rest):
        if not token or token.startswith(("/", "?", "#", "-", "$")):
            continue
        lowered = token.lower()
        named_by_option = False  # `host=db` in a libpq-style DSN names a host whatever the key
        for prefix in ("host=", "hostaddr=", "server=", "address="):
            if lowered.startswith(prefix):
                token, named_by_option = token[len(prefix):], True
                break
        else:
            if "=" in token:
                continue
        token = token.split("/", 1)[0]
        ref = _host_port(token)
        if ref is None:
            continue
        if ref.port is None and not (address_key or named_by_option or is_cluster_name(ref.host)):
            continue
        found.append(ref)
    return tuple(dict.fromkeys(found))


# ADO.NET-style connection strings: `Server=tcp:db,1433;Database=orders;User Id=sa;Password=...`.
_CONNECTION_OPTION = re.compile(r"^\s*(?P<name>[A-Za-z][A-Za-z0-9 _.-]*?)\s*=(?P<value>.*)$", re.S)
_HOST_OPTIONS = {"server", "datasource", "host", "hostname", "address", "addr", "networkaddress", "endpoint",
                 "contactpoints", "bootstrapservers"}


def connection_string_options(value: str) -> list[tuple[str, str]] | None:
    """(option, value) pairs of a `name=value;name=value` connection string, or None when it is not one."""
    if ";" not in value:
        return None
    parts = [part for part in value.split(";") if part.strip()]
    matches = [_CONNECTION_OPTION.match(part) for part in parts]
    if not parts or not all(matches):
        return None
    return [(m.group("name"), m.group("value").strip()) for m in matches]


def _connection_string_hosts(options: list[tuple[str, str]]) -> list[HostRef]:
    """Only the host options of a connection string name hosts (`User Id=sa` names a user)."""
    found = []
    port = next((v for n, v in options if n.lower() == "port" and v.isdigit() and 0 < int(v) < 65536), None)
    for name, value in options:
        if re.sub(r"[\s_.-]", "", name.lower()) not in _HOST_OPTIONS:
            continue
        value = re.sub(r"^(?:tcp|np|lpc):", "", value, flags=re.I)  # SQL Server's protocol prefix
        if re.fullmatch(r"[^,]+,\d+", value):
            value = value.replace(",", ":")  # SQL Server writes the port after a comma
        for part in value.split(","):
            ref = _host_port(part.split("/", 1)[0].split("\\", 1)[0])  # `host\INSTANCE`
            if ref:
                found.append(HostRef(ref.host, int(port)) if ref.port is None and port else ref)
    return found


_WAIT_TOOLS_WITH_HOST_OPTION = {"pg_isready", "mysqladmin", "redis-cli", "mongosh", "mongo", "psql", "mysql",
                                "cqlsh", "kafka-topics", "kafka-topics.sh"}
_OPTIONS_WITH_VALUE = {"-w", "-W", "-i", "-q", "-s", "-p", "-t", "--timeout", "-timeout"}
_SHELL_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_shell(text: str, env: dict[str, str]) -> str:
    """Expand $VAR and ${VAR} known from the container's environment; leave the rest as written."""
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return env.get(name, match.group(0))

    return _SHELL_VARIABLE.sub(replace, text)


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError:
        return text.split()


def wait_targets(text: str, *, urls: bool) -> tuple[HostRef, ...]:
    """Hosts a start-up command waits for: `nc -z svc 8080`, `nslookup svc`, `wait-for-it svc:80`,
    `pg_isready -h svc`, `/dev/tcp/svc/80`, and with `urls`, any URL it fetches (wget/curl loops)."""
    found: list[HostRef] = []
    tokens = [t.strip(";&|()") for t in _tokens(text)]
    for i, token in enumerate(tokens):
        tool = token.rsplit("/", 1)[-1]
        following = tokens[i + 1:]
        if tool in ("nc", "ncat", "netcat"):
            words = _skip_options(following)
            if words:
                port = words[1] if len(words) > 1 and words[1].isdigit() else None
                ref = _host_port(words[0] + (f":{port}" if port else ""))
                if ref:
                    found.append(ref)
        elif tool in ("nslookup", "dig") or (tool == "getent" and following[:1] == ["hosts"]):
            words = _skip_options(following[1:] if tool == "getent" else following)
            ref = _host_port(words[0]) if words else None
            if ref:
                found.append(ref)
        elif tool.startswith("wait-for"):
            words = _skip_options(following)
            ref = _host_port(words[0]) if words else None
            if ref:
                found.append(ref)
        elif tool in _WAIT_TOOLS_WITH_HOST_OPTION:
            host, port = _option_value(following, ("-h", "--host")), _option_value(following, ("-p", "--port"))
            ref = _host_port(host + (f":{port}" if port and port.isdigit() else "")) if host else None
            if ref:
                found.append(ref)
    for match in re.finditer(r"/dev/tcp/([A-Za-z0-9.-]+)/(\d+)", text):
        ref = _host_port(f"{match.group(1)}:{match.group(2)}")
        if ref:
            found.append(ref)
    if urls:
        for match in _URL.finditer(text):
            for part in match.group("netloc").split(","):
                ref = _host_port(part)
                if ref:
                    found.append(ref)
    return tuple(dict.fromkeys(found))


def _skip_options(words: list[str]) -> list[str]:
    result: list[str] = []
    skip_next = False
    for word in words:
        if skip_next:
            skip_next = False
            continue
        if word in ("--", "&&", "||", "do", "then", ";"):
            break
        if word.startswith("-"):
            skip_next = word in _OPTIONS_WITH_VALUE
            continue
        result.append(word)
        if len(result) == 2:
            break
    return result


def _option_value(words: list[str], names: tuple[str, ...]) -> str | None:
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                return words[i + 1]
            if name.startswith("--") and word.startswith(name + "="):
                return word[len(name) + 1:]
            if not name.startswith("--") and word.startswith(name) and len(word) > len(name):
                return word[len(name):]
    return None


# --- inference over a fleet ---------------------------------------------------------------------------


@dataclass
class EvidenceItem:
    evidence: str
    startup: bool
    kind: str
    key: str
    display: str
    note: str = ""


@dataclass
class InferredEdge:
    consumer: str
    provider: str
    items: list[EvidenceItem] = field(default_factory=list)
    soft: bool = False
    soft_reason: str = ""

    @property
    def startup_only(self) -> bool:
        return all(item.startup for item in self.items)

    @property
    def evidence(self) -> list[str]:
        return sorted({item.evidence for item in self.items})


@dataclass(frozen=True)
class Unresolved:
    consumer: str
    evidence: str
    host: HostRef
    display: str
    reason: str


@dataclass
class EdgeReport:
    edges: dict[tuple[str, str], InferredEdge] = field(default_factory=dict)
    unresolved: list[Unresolved] = field(default_factory=list)
    external: list[Unresolved] = field(default_factory=list)
    self_references: list[tuple[str, str]] = field(default_factory=list)  # (service, evidence)

    def of(self, consumer: str) -> list[InferredEdge]:
        return sorted((e for (c, _), e in self.edges.items() if c == consumer), key=lambda e: e.provider)


def describe_host(host: HostRef) -> str:
    return f"{host.host}:{host.port}" if host.port else host.host


def infer_edges(fleet: ImportedFleet) -> EdgeReport:
    report = EdgeReport()
    for name in sorted(fleet.services):
        service = fleet.services[name]
        for ref in service.references:
            _add_reference(report, fleet, service, ref)
    return report


def _add_edge(report: EdgeReport, consumer: str, provider: str, ref: Reference, note: str) -> None:
    edge = report.edges.setdefault((consumer, provider), InferredEdge(consumer, provider))
    item = EvidenceItem(ref.evidence, ref.startup, ref.kind, ref.key, ref.display, note or ref.note)
    if not any(existing.evidence == item.evidence for existing in edge.items):
        edge.items.append(item)


def _add_reference(report: EdgeReport, fleet: ImportedFleet, service, ref: Reference) -> None:
    if ref.target is not None:
        if ref.target == service.name:
            report.self_references.append((service.name, ref.evidence))
        else:
            _add_edge(report, service.name, ref.target, ref, "")
        return
    for host in ref.hosts:
        resolution = fleet.resolver.resolve(service, host)
        providers = [p for p in resolution.services if p != service.name]
        if resolution.services and not providers:
            if (service.name, ref.evidence) not in report.self_references:
                report.self_references.append((service.name, ref.evidence))
            continue
        for provider in providers:
            _add_edge(report, service.name, provider, ref, resolution.note)
        if resolution.unresolved or resolution.external:
            entry = Unresolved(service.name, ref.evidence, host, ref.display, resolution.note)
            target = report.unresolved if resolution.unresolved else report.external
            if entry not in target:
                target.append(entry)
