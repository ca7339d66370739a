"""What a release notification says, and the one way a channel fails.

A channel adapter (SNS, Slack, a signed webhook) formats a `Notification` its own way and sends it; whatever
goes wrong becomes `DeliveryFailed`, whose message names the channel and never carries its URL or key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

# What happened, in the words a message's headline uses (the keys are the manifest's `events`).
WHAT_HAPPENED = {
    "failed": "failed",
    "rolled_back": "was rolled back",
    "approval_needed": "needs an approval",
    "waiting_too_long": "has been waiting too long",
}


@dataclass(frozen=True)
class Notification:
    kind: str  # failed, rolled_back, approval_needed, waiting_too_long
    service: str
    environment: str  # "" for the stages before the first environment (image, integration)
    stage: str  # the asset, e.g. orders/prod
    sha: str  # the release's commit ("" when no commit is known yet)
    reason: str  # a sentence for a release manager (release_graph/release/why.py)
    link: str  # the run (or the asset) in the Dagster UI
    run_id: str = ""
    digest: str = ""

    @property
    def short_sha(self) -> str:
        return self.sha[:7]

    def headline(self) -> str:
        release = f" ({self.short_sha})" if self.sha else ""
        return f"{self.stage}{release} {WHAT_HAPPENED.get(self.kind, self.kind)}"

    def fields(self) -> dict[str, str]:
        """What every message names, in this order."""
        return {"service": self.service, "environment": self.environment or "-", "sha": self.sha or "-",
                "stage": self.stage, "reason": self.reason, "link": self.link}

    def text(self) -> str:
        return self.headline() + "\n" + "\n".join(f"{name}: {value}" for name, value in self.fields().items())

    def as_dict(self) -> dict:
        return {**asdict(self), "headline": self.headline()}


class DeliveryFailed(Exception):
    """A channel did not take a message (did not answer, refused it, or its secret is not set). The message
    names the channel by name, type and the variable its secret comes from: never the URL or the key."""


class Channel(ABC):
    """One configured destination of notifications."""

    name: str

    @abstractmethod
    def send(self, notification: Notification) -> None:
        """Deliver one message, or raise DeliveryFailed."""


def redact(text: str, *secrets: str) -> str:
    """`text` with every secret value (and a URL's path, where tokens live) replaced by a marker."""
    from urllib.parse import urlsplit

    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, "<secret>")
        parts = urlsplit(secret)
        tail = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(tail) > 1:
            text = text.replace(tail, "<secret>")
    return text


def secret_from(variable: str, channel: str) -> str:
    """The value of the orchestrator's environment variable `variable`, read at send time."""
    import os

    value = os.environ.get(variable, "")
    if not value:
        raise DeliveryFailed(f"channel {channel}: ${variable} is not set in the orchestrator's environment")
    return value
