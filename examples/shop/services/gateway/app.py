"""gateway: the shop's public API; checks requests at the edge and passes them to orders.

Settings (besides those in shopkit.py):
  ORDERS_URL                orders' base URL (http://orders:8080)
  MAX_QUANTITY              largest quantity one order may ask for (100)
  UPSTREAM_TIMEOUT_SECONDS  timeout of each call to orders (10)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import shopkit


def build(env: Mapping[str, str]) -> shopkit.Service:
    service = shopkit.Service("gateway", env)
    orders_url = service.upstream("orders", shopkit.env_url(env, "ORDERS_URL", "http://orders:8080"))
    max_quantity = shopkit.env_int(env, "MAX_QUANTITY", 100, 1, 1_000_000)
    timeout = shopkit.env_float(env, "UPSTREAM_TIMEOUT_SECONDS", 10.0, 0.1, 120.0)

    def forward(method: str, path: str, body: Any = None) -> shopkit.Reply:
        """orders' answer as it is, except that its failures become the gateway's 502."""
        status, reply = service.call("orders", orders_url, method, path, body, timeout=timeout)
        if status >= 500:
            raise shopkit.HttpError(502, f"orders answered {status}: {reply.get('error', reply)}", upstream="orders")
        return status, reply

    @service.route("POST", "/api/orders")
    def place_order(req: shopkit.Request) -> shopkit.Reply:
        shopkit.require_fields(req.body, sku=str, quantity=int)
        quantity = req.body["quantity"]
        if not 1 <= quantity <= max_quantity:
            raise shopkit.HttpError(400, f"quantity: expected 1 to {max_quantity}, got {quantity}")
        return forward("POST", "/orders", {"sku": req.body["sku"], "quantity": quantity})

    @service.route("GET", "/api/orders/{order_id}")
    def get_order(req: shopkit.Request) -> shopkit.Reply:
        return forward("GET", f"/orders/{req.params['order_id']}")

    @service.route("DELETE", "/api/orders/{order_id}")
    def cancel_order(req: shopkit.Request) -> shopkit.Reply:
        return forward("DELETE", f"/orders/{req.params['order_id']}")

    @service.route("GET", "/api/products/{sku}")
    def get_product(req: shopkit.Request) -> shopkit.Reply:
        return forward("GET", f"/products/{req.params['sku']}")

    return service


if __name__ == "__main__":
    shopkit.main(build)
