"""orders running beside the real inventory and payments: every order carries values only they produce.

Environment: ORDERS_URL, INVENTORY_URL, PAYMENTS_URL (default http://<service>:8080).
"""

import os
import unittest

import shopkit

SERVICES = ("orders", "inventory", "payments")
URLS = {name: os.environ.get(f"{name.upper()}_URL", f"http://{name}:8080") for name in SERVICES}


def setUpModule():
    shopkit.wait_until_healthy(URLS)


def call(service, method, path, body=None):
    return shopkit.request_json(URLS[service], method, path, body)


def stock(sku):
    return call("inventory", "GET", f"/stock/{sku}")[1]


class OrdersIntegrationTest(unittest.TestCase):
    def test_an_order_holds_real_stock_and_the_authorisation_payments_computed(self):
        before = stock("widget")
        status, order = call("orders", "POST", "/orders", {"sku": "widget", "quantity": 2})
        self.assertEqual(status, 201, order)
        self.addCleanup(call, "orders", "DELETE", f"/orders/{order['order_id']}")
        self.assertEqual(order["remaining_stock"], before["available"] - 2)
        self.assertEqual(stock("widget")["available"], order["remaining_stock"])
        self.assertEqual(order["amount_cents"], 2 * before["unit_price_cents"])
        # payments derives the id from its secret key: only the real payments can have produced it.
        terms = {"reference": order["order_id"], "amount_cents": order["amount_cents"], "currency": order["currency"]}
        self.assertEqual(call("payments", "POST", "/authorizations", terms)[1]["auth_id"], order["auth_id"])

    def test_cancelling_an_order_gives_its_stock_back_to_inventory(self):
        before = stock("widget")["available"]
        order = call("orders", "POST", "/orders", {"sku": "widget", "quantity": 3})[1]
        status, cancelled = call("orders", "DELETE", f"/orders/{order['order_id']}")
        self.assertEqual((status, cancelled["status"], cancelled["remaining_stock"]), (200, "cancelled", before))
        self.assertEqual(stock("widget")["available"], before)

    def test_out_of_stock_reports_what_inventory_has_left(self):
        available = stock("gizmo")["available"]
        status, body = call("orders", "POST", "/orders", {"sku": "gizmo", "quantity": available + 1})
        self.assertEqual((status, body["available"]), (409, available))

    def test_a_payment_declined_by_payments_leaves_the_stock_untouched(self):
        limit = call("payments", "POST", "/authorizations",
                     {"reference": "probe", "amount_cents": 10**12, "currency": "EUR"})[1]["limit_cents"]
        gadget = stock("gadget")
        quantity = limit // gadget["unit_price_cents"] + 1
        self.assertLessEqual(quantity, gadget["available"], "not enough gadgets to exceed the payment limit")
        status, body = call("orders", "POST", "/orders", {"sku": "gadget", "quantity": quantity})
        self.assertEqual((status, body["error"]), (402, "payment declined"))
        self.assertEqual(stock("gadget")["available"], gadget["available"])


if __name__ == "__main__":
    unittest.main()
