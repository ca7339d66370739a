"""inventory: stock per SKU, reserved by orders and released again when an order is cancelled.

Settings (besides those in shopkit.py):
  INITIAL_STOCK  units on hand at start per catalogue SKU, e.g. "widget=1000,gizmo=3"
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping

import shopkit

# sku -> (units on hand at start, unit price in cents). The demo's shoppers buy doohickeys only: the end-to-end tests
# count widgets, gadgets and gizmos, and another buyer of those in the same environment would change their counts.
CATALOGUE = {"widget": (1000, 1250), "gadget": (500, 8999), "gizmo": (3, 24900), "doohickey": (100000, 450)}


def parse_initial_stock(raw: str) -> dict[str, int]:
    stock = {sku: units for sku, (units, _price) in CATALOGUE.items()}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        sku, sep, units = item.partition("=")
        if not sep or not units.strip().isdigit():
            raise shopkit.ConfigError(f"INITIAL_STOCK: expected sku=units items, got {item!r}")
        if sku.strip() not in CATALOGUE:
            raise shopkit.ConfigError(
                f"INITIAL_STOCK: unknown sku {sku.strip()!r} (catalogue: {', '.join(CATALOGUE)})"
            )
        stock[sku.strip()] = int(units)
    return stock


def build(env: Mapping[str, str]) -> shopkit.Service:
    service = shopkit.Service("inventory", env)
    stock = parse_initial_stock(env.get("INITIAL_STOCK", ""))
    reservations: dict[str, tuple[str, int]] = {}
    lock = threading.Lock()

    def known_sku(sku: str) -> str:
        if sku not in CATALOGUE:
            raise shopkit.HttpError(404, f"unknown sku {sku!r}", sku=sku)
        return sku

    @service.route("GET", "/stock/{sku}")
    def get_stock(req: shopkit.Request) -> shopkit.Reply:
        sku = known_sku(req.params["sku"])
        with lock:
            return 200, {"sku": sku, "available": stock[sku], "unit_price_cents": CATALOGUE[sku][1]}

    @service.route("POST", "/reservations")
    def reserve(req: shopkit.Request) -> shopkit.Reply:
        shopkit.require_fields(req.body, sku=str, quantity=int)
        sku, quantity = known_sku(req.body["sku"]), req.body["quantity"]
        if quantity < 1:
            raise shopkit.HttpError(400, f"quantity: expected at least 1, got {quantity}")
        with lock:
            if stock[sku] < quantity:
                raise shopkit.HttpError(409, "insufficient stock", sku=sku, available=stock[sku])
            stock[sku] -= quantity
            reservation_id = f"res-{secrets.token_hex(6)}"
            reservations[reservation_id] = (sku, quantity)
            remaining = stock[sku]
        return 201, {
            "reservation_id": reservation_id,
            "sku": sku,
            "quantity": quantity,
            "unit_price_cents": CATALOGUE[sku][1],
            "remaining": remaining,
        }

    @service.route("DELETE", "/reservations/{reservation_id}")
    def release(req: shopkit.Request) -> shopkit.Reply:
        reservation_id = req.params["reservation_id"]
        with lock:
            if reservation_id not in reservations:
                raise shopkit.HttpError(404, f"unknown reservation {reservation_id!r}")
            sku, quantity = reservations.pop(reservation_id)
            stock[sku] += quantity
            remaining = stock[sku]
        return 200, {"released": reservation_id, "sku": sku, "quantity": quantity, "remaining": remaining}

    return service


if __name__ == "__main__":
    shopkit.main(build)
