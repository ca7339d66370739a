"""The network rule's floor on the docker target: nothing is forwarded into a service's network from another.

Each service of an environment has a network of its own (target.py), and a caller reaches it only through the
environment's switch on this host (haproxy.py), which admits declared callers only. That holds only if the
networks cannot reach each other's containers directly. Docker isolates user-defined bridge networks from each
other by default. Podman's netavark does so only for networks created with `isolate`, and netavark 1.4 (Debian
12) loses it: when the last container of any isolated network goes, it deletes the FORWARD chain's jump to its
isolation rules, which then apply to no network at all (measured: a container reached another isolated
network's container as soon as a third network's container was removed).

So this host gets one rule per release-graph network, in a chain of its own that the FORWARD chain jumps to
first: `-d <subnet> ! -s <subnet> -j DROP`. A packet into the network from any other network is dropped; the
host itself (health checks, the switch) reaches containers by its own output path, which FORWARD never sees,
and containers keep their way out. Rules are added when a network is ensured, removed when it is torn down,
and `sweep` drops those of networks that are gone.

Only where the engine's bridges are this host's (a local engine) and this process may change the firewall
(root, `iptables` present); elsewhere `isolate` returns False and the engine's own isolation is all there is
(Docker's default; rootless Podman has none, and the docs say so). Nothing runs at import time.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

CHAIN = "RELEASE_GRAPH_ISOLATION"
COMMENT = "release-graph network rule"
LOCK_FILE = Path("/run/release-graph-isolation.lock")  # one writer at a time: check-then-add must not race


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("iptables") is not None


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True, timeout=30)


def _rule(subnet: str) -> list[str]:
    return ["-d", subnet, "!", "-s", subnet, "-m", "comment", "--comment", COMMENT, "-j", "DROP"]


class _Locked:
    def __enter__(self):
        self.handle = open(LOCK_FILE, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _ensure_chain() -> None:
    if _iptables("-n", "-L", CHAIN).returncode != 0:
        created = _iptables("-N", CHAIN)
        if created.returncode != 0 and "exists" not in created.stderr:
            raise OSError(f"iptables -N {CHAIN}: {created.stderr.strip()}")
    if _iptables("-C", "FORWARD", "-j", CHAIN).returncode != 0:
        inserted = _iptables("-I", "FORWARD", "1", "-j", CHAIN)
        if inserted.returncode != 0:
            raise OSError(f"iptables -I FORWARD 1 -j {CHAIN}: {inserted.stderr.strip()}")


def isolate(subnet: str) -> bool:
    """Drop whatever another network sends into `subnet`. False: this host cannot (not root, no iptables)."""
    ipaddress.ip_network(subnet)  # ValueError before anything reaches the firewall
    if not available():
        return False
    with _Locked():
        _ensure_chain()
        if _iptables("-C", CHAIN, *_rule(subnet)).returncode != 0:
            added = _iptables("-A", CHAIN, *_rule(subnet))
            if added.returncode != 0:
                raise OSError(f"iptables -A {CHAIN} for {subnet}: {added.stderr.strip()}")
    return True


def isolated(subnet: str) -> bool:
    """Whether this host drops what other networks send into `subnet` (its rule is in place, and FORWARD reaches
    it)."""
    if not available():
        return False
    return (_iptables("-C", "FORWARD", "-j", CHAIN).returncode == 0
            and _iptables("-C", CHAIN, *_rule(subnet)).returncode == 0)


def release(subnet: str) -> None:
    """Remove `subnet`'s rule (every copy); nothing when there is none or this host cannot."""
    if not available():
        return
    with _Locked():
        _release(subnet)


def _release(subnet: str) -> None:
    for _ in range(100):
        if _iptables("-D", CHAIN, *_rule(subnet)).returncode != 0:
            break


def subnets() -> list[str]:
    """The subnets this host isolates now."""
    if not available():
        return []
    listed = _iptables("-S", CHAIN)
    found = []
    for line in listed.stdout.splitlines():
        fields = line.split()
        if COMMENT.split()[0] in line and "-d" in fields:
            found.append(fields[fields.index("-d") + 1])
    return found


def sweep(existing: Callable[[], Iterable[str]]) -> list[str]:
    """Remove the rules of subnets that no network has now (networks gone without their teardown); returns them.
    `existing` lists the subnets of every network of the engine, asked while the lock is held: a network created
    meanwhile is isolated after the sweep, never swept away after its rule was added."""
    if not available():
        return []
    with _Locked():
        wanted = {str(ipaddress.ip_network(subnet)) for subnet in existing()}
        gone = [subnet for subnet in subnets() if str(ipaddress.ip_network(subnet)) not in wanted]
        for subnet in gone:
            _release(subnet)
    return gone
