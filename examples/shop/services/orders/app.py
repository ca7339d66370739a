"""orders: takes an order by reserving stock in inventory and authorising its amount with payments.

An order that payments declines or cannot authorise gives its reservation back, and so does a
cancelled order.

Settings (besides those in shopkit.py):
  INVENTORY_URL             inventory's base URL (http://inventory:8080)
  PAYMENTS_URL              payments' base URL (http://payments:8080)
  UPSTREAM_TIMEOUT_SECONDS  timeout of each call to them (5)
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from typing import Any

import shopkit

CURRENCY = "EUR"


def build(env: Mapping[str, str]) -> shopkit.Service:
    service = shopkit.Service("orders", env)
    inventory_url = service.upstream("inventory", shopkit.env_url(env, "INVENTORY_URL", "http://inventory:8080"))
    payments_url = service.upstream("payments", shopkit.env_url(env, "PAYMENTS_URL", "http://payments:8080"))
    timeout = shopkit.env_float(env, "UPSTREAM_TIMEOUT_SECONDS", 5.0, 0.1, 120.0)
    orders: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def inventory(method: str, path: str, body: Any = None) -> shopkit.Reply:
        return service.call("inventory", inventory_url, method, path, body, timeout=timeout)

    def upstream_failed(upstream: str, status: int, reply: dict[str, Any]) -> shopkit.HttpError:
        return shopkit.HttpError(502, f"{upstream} answered {status}: {reply.get('error', reply)}", upstream=upstream)

    def release(reservation_id: str) -> int | None:
        """Gives a reservation back; the units then left, or None when inventory could not take it back."""
        try:
            status, reply = inventory("DELETE", f"/reservations/{reservation_id}")
        except shopkit.HttpError as exc:
            status, reply = exc.status, exc.body
        if status != 200:
            service.log(event="release-failed", reservation_id=reservation_id, status=status, error=reply)
            return None
        return reply["remaining"]

    @service.route("POST", "/orders")
    def place_order(req: shopkit.Request) -> shopkit.Reply:
        shopkit.require_fields(req.body, sku=str, quantity=int)
        sku, quantity = req.body["sku"], req.body["quantity"]
        if quantity < 1:
            raise shopkit.HttpError(400, f"quantity: expected at least 1, got {quantity}")
        status, reservation = inventory("POST", "/reservations", {"sku": sku, "quantity": quantity})
        if status == 404:
            raise shopkit.HttpError(404, f"unknown sku {sku!r}", sku=sku)
        if status == 409:
            raise shopkit.HttpError(409, "out of stock", sku=sku, available=reservation.get("available"))
        if status != 201:
            raise upstream_failed("inventory", status, reservation)

        order_id = f"ord-{secrets.token_hex(6)}"
        amount = quantity * reservation["unit_price_cents"]
        authorization = {"reference": order_id, "amount_cents": amount, "currency": CURRENCY}
        try:
            status, payment = service.call("payments", payments_url, "POST", "/authorizations", authorization,
                                           timeout=timeout)
        except shopkit.HttpError:
            release(reservation["reservation_id"])
            raise
        if status != 201:
            release(reservation["reservation_id"])
            if status == 402:
                raise shopkit.HttpError(402, "payment declined", reason=payment.get("error"), amount_cents=amount)
            raise upstream_failed("payments", status, payment)

        order = {
            "order_id": order_id,
            "status": "confirmed",
            "sku": sku,
            "quantity": quantity,
            "amount_cents": amount,
            "currency": CURRENCY,
            "reservation_id": reservation["reservation_id"],
            "remaining_stock": reservation["remaining"],
            "auth_id": payment["auth_id"],
        }
        with lock:
            orders[order_id] = order
        return 201, order

    def known_order(order_id: str) -> dict[str, Any]:
        with lock:
            if order_id not in orders:
                raise shopkit.HttpError(404, f"unknown order {order_id!r}")
            return dict(orders[order_id])

    @service.route("GET", "/orders/{order_id}")
    def get_order(req: shopkit.Request) -> shopkit.Reply:
        return 200, known_order(req.params["order_id"])

    @service.route("DELETE", "/orders/{order_id}")
    def cancel_order(req: shopkit.Request) -> shopkit.Reply:
        order = known_order(req.params["order_id"])
        if order["status"] == "cancelled":
            return 200, order
        remaining = release(order["reservation_id"])
        if remaining is None:
            raise shopkit.HttpError(502, "inventory did not take the reservation back", upstream="inventory")
        with lock:
            orders[order["order_id"]].update(status="cancelled", remaining_stock=remaining)
            return 200, dict(orders[order["order_id"]])

    @service.route("GET", "/products/{sku}")
    def get_product(req: shopkit.Request) -> shopkit.Reply:
        status, stock = inventory("GET", f"/stock/{req.params['sku']}")
        if status not in (200, 404):
            raise upstream_failed("inventory", status, stock)
        return status, stock

    return service


if __name__ == "__main__":
    shopkit.main(build)
