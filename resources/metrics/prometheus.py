"""Prometheus as a source of a rollout's measurements, and the scrape targets release-graph writes for it.

- `PrometheusMetrics`: instant queries over the HTTP API (`/api/v1/query`) for the requests, the error rate
  and the p95 latency of one version (a digest) of one service in one environment, over a range that covers
  the window since it opened. The queries are the manifest's (`rollout.analysis.prometheus`) or the defaults
  below, written for the demo services' metrics (examples/shop/services/*/shopkit.py).
- `ScrapeTargets`: Prometheus `file_sd` JSON files, one per fleet and environment, that the deploy target
  rewrites whenever a container starts or stops serving. Versions are told apart by the labels Prometheus
  attaches from these targets (fleet, environment, service, digest, role), not by the services themselves:
  a service knows its commit at best, never the digest it was released as.

Nothing here does I/O at import or construction time.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from release_graph.fleet.model import PrometheusSettings
from resources.metrics.interface import Measurement, MetricProvider, MetricsUnavailable, Subject, Window
from resources.state import state_dir

SCRAPE_INTERVAL_SECONDS = 2.0
# increase() needs two samples inside its range: three scrape intervals leave room for one late scrape.
MIN_RANGE_SECONDS = 3 * SCRAPE_INTERVAL_SECONDS

_VERSION = 'fleet="{fleet}",environment="{environment}",service="{service}",digest="{digest}"'
DEFAULT_REQUESTS_QUERY = "sum(increase(shop_api_requests_total{" + _VERSION + "}[{window}]))"
DEFAULT_ERROR_RATE_QUERY = (
    "sum(increase(shop_api_requests_total{" + _VERSION + ',class="5xx"}[{window}]))'
    " / sum(increase(shop_api_requests_total{" + _VERSION + "}[{window}]))"
)
DEFAULT_P95_QUERY = (  # seconds, as Prometheus histograms count them
    "histogram_quantile(0.95, sum by (le) (increase(shop_api_request_duration_seconds_bucket{" + _VERSION
    + "}[{window}])))"
)
# Only these names are placeholders: PromQL itself is full of braces, so str.format cannot fill a query.
PLACEHOLDER = re.compile(r"\{(fleet|environment|service|digest|role|window)\}")


def fill_query(query: str, subject: Subject, window: str) -> str:
    """The query with the subject's names and the range (e.g. `30s`) in place of its placeholders."""
    values = {"fleet": subject.fleet, "environment": subject.environment, "service": subject.service,
              "digest": subject.digest, "role": subject.role}

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "window":
            return window
        # Placeholders sit inside PromQL double-quoted strings.
        return values[name].replace("\\", "\\\\").replace('"', '\\"')

    return PLACEHOLDER.sub(value, query)


def range_for(window: Window, now: float) -> str:
    """The range a window's queries cover: whole seconds since it opened, at least MIN_RANGE_SECONDS."""
    return f"{max(math.ceil(now - window.opened_at), math.ceil(MIN_RANGE_SECONDS))}s"


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class PrometheusMetrics(MetricProvider):
    """Requests, error rate and p95 latency of one version, from Prometheus' query API."""

    name = "prometheus"

    def __init__(self, settings: PrometheusSettings, *, timeout_seconds: float = 5.0) -> None:
        self.settings = settings
        self.timeout_seconds = timeout_seconds

    @property
    def url(self) -> str:
        return self.settings.resolved_url().rstrip("/")

    def wait_until_scraped(self, subject: Subject, timeout_seconds: float = 20.0) -> float:
        """Waits until Prometheus scrapes the subject's target (written by ScrapeTargets) successfully and
        returns the seconds waited. Call it before the version takes traffic: increase() counts only what
        happens after the first scrape, and Prometheus applies new targets in batches, 5 to 7 s after the file
        changes (measured with 2.42). Raises MetricsUnavailable when it is not scraped in time."""
        started = time.monotonic()
        selector = fill_query('fleet="{fleet}",environment="{environment}",service="{service}",digest="{digest}"',
                              subject, "")
        while True:
            now = time.time()
            scraped = self._ask("scrape state", f"count(up{{{selector}}} == 1)", Window(subject, now), "", now)
            if scraped:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_seconds:
                raise MetricsUnavailable(f"Prometheus at {self.url}: no successful scrape of {subject.service} "
                                         f"{_short(subject.digest)} in {subject.fleet}/{subject.environment} after "
                                         f"{timeout_seconds:g} s: is its scrape target written, and does it answer?")
            time.sleep(0.25)

    def measure(self, window: Window) -> Measurement:
        now = time.time()
        window_range = range_for(window, now)
        settings = self.settings
        requests = self._ask("requests", settings.requests_query or DEFAULT_REQUESTS_QUERY, window, window_range, now)
        error_rate = self._ask("error rate", settings.error_rate_query or DEFAULT_ERROR_RATE_QUERY, window,
                               window_range, now)
        p95_seconds = self._ask("p95 latency", settings.p95_query or DEFAULT_P95_QUERY, window, window_range, now)
        # No series at all means nothing was answered in the range: zero requests (Inconclusive), not an Error.
        request_count = round(requests or 0)
        errors = round(error_rate * request_count) if error_rate is not None else (0 if request_count == 0 else None)
        return Measurement(
            provider=self.name,
            requests=request_count,
            errors=errors,
            p95_ms=None if p95_seconds is None else p95_seconds * 1000,
            seconds=round(max(0.0, now - window.opened_at), 1),
        )

    def _ask(self, what: str, query: str, window: Window, window_range: str, now: float) -> float | None:
        """One instant query evaluated at `now`; its single value, or None when no series matched (or NaN)."""
        subject = window.subject
        promql = fill_query(query, subject, window_range)
        where = (f"Prometheus at {self.url}: {what} of {subject.service} {_short(subject.digest)} in "
                 f"{subject.fleet}/{subject.environment} (query {promql!r})")
        body = urllib.parse.urlencode({"query": promql, "time": f"{now:.3f}"}).encode()
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=body, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            # Prometheus explains a refused query in the JSON body of a 4xx/5xx answer.
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error") or detail
            raise MetricsUnavailable(f"{where}: answered {exc.code}: {detail[:500]}") from None
        except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, timed out, cut off
            reason = getattr(exc, "reason", None) or exc
            raise MetricsUnavailable(f"{where}: no answer: {reason}") from None
        try:
            answer = json.loads(raw)
            if answer.get("status") != "success":
                raise MetricsUnavailable(f"{where}: {answer.get('errorType')}: {answer.get('error')}")
            data = answer["data"]
            kind, result = data["resultType"], data["result"]
            if kind == "scalar":
                text = result[1]
            elif kind == "vector":
                if not result:
                    return None
                if len(result) > 1:
                    raise MetricsUnavailable(f"{where}: returned {len(result)} series; a measurement is one "
                                             f"number: aggregate the query, e.g. with sum(...)")
                text = result[0]["value"][1]
            else:
                raise MetricsUnavailable(f"{where}: returned a {kind}; an instant vector or a scalar was expected")
            value = float(text)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MetricsUnavailable(f"{where}: an answer the query API does not give: {exc!r}") from None
        # NaN is 0/0 (an error rate without requests); +Inf (a p95 beyond the last bucket) is kept: it fails.
        return None if math.isnan(value) else value


LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TARGET_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


@dataclass(frozen=True)
class ScrapeTarget:
    """One address Prometheus scrapes, with the labels it attaches to every series scraped there."""

    fleet: str
    environment: str
    address: str  # host:port
    labels: Mapping[str, str] = field(default_factory=dict)


class ScrapeTargets:
    """Prometheus `file_sd` files under one folder: `<fleet>_<environment>.json` (names are DNS labels, which
    hold no `_`, so every pair has its own file). Each file is replaced atomically (a temporary file renamed
    over it), so Prometheus never reads half a file, and updates from several processes are serialised by a
    lock file. Every target carries `fleet` and `environment` labels; callers add `service`, `digest` and
    `role`. A Prometheus started by `PrometheusServer` reads `<folder>/*.json`."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @classmethod
    def default(cls) -> ScrapeTargets:
        """The folder the project's own Prometheus reads: `<state folder>/prometheus/targets`."""
        return cls(state_dir() / "prometheus" / "targets")

    def path(self, fleet: str, environment: str) -> Path:
        return self.directory / f"{fleet}_{environment}.json"

    def write(self, fleet: str, environment: str, targets: Iterable[tuple[str, Mapping[str, str]]]) -> Path:
        """Replaces what Prometheus scrapes for `fleet`/`environment` with `targets` ((address:port, labels));
        an empty list leaves an empty file (nothing to scrape there)."""
        entries = [self._entry(fleet, environment, address, labels) for address, labels in targets]
        with self._locked():
            return self._replace(fleet, environment, entries)

    def add(self, fleet: str, environment: str, address: str, labels: Mapping[str, str]) -> None:
        """Adds one target (or replaces the labels of `address`), keeping the others of the environment."""
        entry = self._entry(fleet, environment, address, labels)
        with self._locked():
            entries = [e for e in self._entries(fleet, environment) if e["targets"] != [address]]
            self._replace(fleet, environment, [*entries, entry])

    def remove(self, fleet: str, environment: str, address: str) -> None:
        """Stops scraping `address` in `fleet`/`environment` (nothing happens if it was not a target)."""
        with self._locked():
            entries = self._entries(fleet, environment)
            kept = [e for e in entries if e["targets"] != [address]]
            if kept != entries:
                self._replace(fleet, environment, kept)

    def read(self, fleet: str, environment: str) -> list[ScrapeTarget]:
        return [self._target(entry) for entry in self._entries(fleet, environment)]

    def written(self) -> list[ScrapeTarget]:
        """Every target of every fleet and environment, as the files say now."""
        targets = []
        for path in sorted(self.directory.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):
                targets += [self._target(entry) for entry in json.loads(path.read_text())]
        return targets

    def clear(self, fleet: str, environment: str) -> None:
        """Forgets the environment (after its teardown): its file goes."""
        with self._locked():
            self.path(fleet, environment).unlink(missing_ok=True)

    @staticmethod
    def _entry(fleet: str, environment: str, address: str, labels: Mapping[str, str]) -> dict:
        if not TARGET_ADDRESS.match(address):
            raise ValueError(f"scrape target {address!r}: expected host:port (no scheme, no path)")
        for name, value in labels.items():
            if not LABEL_NAME.match(name) or not isinstance(value, str):
                raise ValueError(f"scrape target {address}: label {name!r}={value!r}: expected a Prometheus label "
                                 f"name ([a-zA-Z_][a-zA-Z0-9_]*) and a string value")
        for name, expected in (("fleet", fleet), ("environment", environment)):
            if labels.get(name, expected) != expected:
                raise ValueError(f"scrape target {address}: label {name}={labels[name]!r} contradicts {expected!r}")
        return {"targets": [address], "labels": {**labels, "fleet": fleet, "environment": environment}}

    @staticmethod
    def _target(entry: dict) -> ScrapeTarget:
        labels = dict(entry["labels"])
        return ScrapeTarget(labels.get("fleet", ""), labels.get("environment", ""), entry["targets"][0], labels)

    def _entries(self, fleet: str, environment: str) -> list[dict]:
        try:
            return json.loads(self.path(fleet, environment).read_text())
        except FileNotFoundError:
            return []

    def _replace(self, fleet: str, environment: str, entries: list[dict]) -> Path:
        path = self.path(fleet, environment)
        entries = sorted(entries, key=lambda e: e["targets"][0])
        # The temporary name starts with '.' and ends in '.tmp': Prometheus' `*.json` never matches it.
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(entries, out, indent=1, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
