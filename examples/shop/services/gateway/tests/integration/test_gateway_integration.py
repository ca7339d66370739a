"""gateway running in front of the real orders, inventory and payments.

Environment: GATEWAY_URL, ORDERS_URL, INVENTORY_URL, PAYMENTS_URL (default http://<service>:8080).
"""

import os
import unittest

import shopkit

SERVICES = ("gateway", "orders", "inventory", "payments")
URLS = {name: os.environ.get(f"{name.upper()}_URL", f"http://{name}:8080") for name in SERVICES}


def setUpModule():
    shopkit.wait_until_healthy(URLS)


def call(service, method, path, body=None):
    return shopkit.request_json(URLS[service], method, path, body)


class GatewayIntegrationTest(unittest.TestCase):
    def test_an_order_through_the_gateway_is_the_order_orders_recorded(self):
        before = call("inventory", "GET", "/stock/widget")[1]["available"]
        status, order = call("gateway", "POST", "/api/orders", {"sku": "widget", "quantity": 1})
        self.assertEqual(status, 201, order)
        self.assertEqual(call("orders", "GET", f"/orders/{order['order_id']}"), (200, order))
        self.assertEqual(call("inventory", "GET", "/stock/widget")[1]["available"], before - 1)
        terms = {"reference": order["order_id"], "amount_cents": order["amount_cents"], "currency": order["currency"]}
        self.assertEqual(call("payments", "POST", "/authorizations", terms)[1]["auth_id"], order["auth_id"])

        status, cancelled = call("gateway", "DELETE", f"/api/orders/{order['order_id']}")
        self.assertEqual((status, cancelled["status"]), (200, "cancelled"))
        self.assertEqual(call("inventory", "GET", "/stock/widget")[1]["available"], before)

    def test_a_product_through_the_gateway_is_what_inventory_holds(self):
        self.assertEqual(call("gateway", "GET", "/api/products/gadget"), call("inventory", "GET", "/stock/gadget"))

    def test_an_unknown_sku_is_not_found_all_the_way_down(self):
        status, body = call("gateway", "POST", "/api/orders", {"sku": "sprocket", "quantity": 1})
        self.assertEqual((status, body["sku"]), (404, "sprocket"))


if __name__ == "__main__":
    unittest.main()
