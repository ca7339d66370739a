"""Keeping an environment's bridge at one MAC address while its containers come and go.

The kernel gives a Linux bridge whose address nobody set the lowest MAC among its ports. Podman's netavark
(1.4, Debian 12) never sets one, so when the container whose port held that lowest MAC is removed, the bridge,
and with it the network's gateway, changes its MAC under every other container. Their ARP caches keep the old
one until it goes stale (up to about a minute): meanwhile their packets to the gateway, which is where the
environment's switch (haproxy) listens, are lost. Measured: a consumer's answers to the switch held for 60 s
(the switch's server timeout) while its provider was replaced, in 2 of 3 runs. Docker sets a random address
on its bridges itself; here the bridge's current address is set explicitly once, which the kernel then keeps.

Only where the bridge is an interface of this host (the engine is local) and this process may change it
(root); elsewhere there is nothing to do, and nothing is done.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ADDRESS_SET_BY_USER = "3"  # /sys/class/net/<dev>/addr_assign_type: NET_ADDR_SET, kept by the kernel


def bridge_of(gateway: str) -> str | None:
    """The name of this host's bridge that holds `gateway` (None: no such bridge here)."""
    try:
        listed = subprocess.run(["ip", "-o", "-4", "addr", "show", "to", f"{gateway}/32"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    fields = listed.stdout.split()
    name = fields[1] if listed.returncode == 0 and len(fields) > 1 else None
    return name if name and (Path("/sys/class/net") / name / "bridge").is_dir() else None


def pin_address(gateway: str | None) -> str | None:
    """Set the bridge holding `gateway` to its own current MAC, so that it keeps it. Returns the bridge's
    name when its address is (now) pinned, None when there is nothing this process can pin."""
    if not gateway or os.geteuid() != 0:
        return None
    name = bridge_of(gateway)
    if name is None:
        return None
    device = Path("/sys/class/net") / name
    try:
        if (device / "addr_assign_type").read_text().strip() == ADDRESS_SET_BY_USER:
            return name
        address = (device / "address").read_text().strip()
        subprocess.run(["ip", "link", "set", "dev", name, "address", address], check=True, capture_output=True,
                       timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None  # the bridge went away meanwhile (its last container removed): the next start pins it
    return name
