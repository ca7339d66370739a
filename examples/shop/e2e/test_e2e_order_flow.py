"""The shop end to end, through its public API only: an order passes gateway, orders, inventory and payments.

Environment: GATEWAY_URL (http://gateway:8080), E2E_WAIT_SECONDS (60). Every order placed is cancelled
again, so running the tests against a long-lived environment leaves its stock as it was.
"""

import http.client
import json
import os
import re
import socket
import time
import unittest
import urllib.parse

GATEWAY_URL = os.environ.get("GATEWAY_URL", "http://gateway:8080")
GATEWAY = urllib.parse.urlsplit(GATEWAY_URL)
# The gateway's address, looked up once it answers: Podman's DNS server (aardvark-dns before 1.11) drops
# queries while any container on the host starts or stops, and a lost query costs a 5 s resolver timeout.
gateway_address = None


def call(method, path, body=None):
    conn = http.client.HTTPConnection(gateway_address or GATEWAY.hostname, GATEWAY.port or 80, timeout=10)
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, body=payload, headers={"Host": GATEWAY.netloc, "Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if path != "/metrics" else raw.decode())
    finally:
        conn.close()


def setUpModule():
    global gateway_address
    deadline = time.monotonic() + float(os.environ.get("E2E_WAIT_SECONDS", "60"))
    while True:
        try:
            address = socket.getaddrinfo(GATEWAY.hostname, GATEWAY.port or 80, type=socket.SOCK_STREAM)[0][4][0]
            gateway_address = address
            if call("GET", "/healthz")[0] == 200:
                return
            problem = "gateway /healthz did not answer 200"
        except OSError as exc:
            problem = f"gateway unreachable: {exc}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"{problem} at {GATEWAY_URL}")
        time.sleep(0.2)


class OrderFlowTest(unittest.TestCase):
    def place(self, sku, quantity):
        status, order = call("POST", "/api/orders", {"sku": sku, "quantity": quantity})
        if status == 201:
            self.addCleanup(call, "DELETE", f"/api/orders/{order['order_id']}")
        return status, order

    def test_an_order_is_reserved_by_inventory_and_authorised_by_payments(self):
        before = call("GET", "/api/products/widget")[1]
        status, order = self.place("widget", 2)
        self.assertEqual((status, order["status"]), (201, "confirmed"), order)
        self.assertRegex(order["reservation_id"], r"^res-[0-9a-f]{12}$")  # issued by inventory
        self.assertRegex(order["auth_id"], r"^auth-[0-9a-f]{24}$")  # issued by payments
        self.assertEqual(order["amount_cents"], 2 * before["unit_price_cents"])
        self.assertEqual(order["remaining_stock"], before["available"] - 2)
        self.assertEqual(call("GET", "/api/products/widget")[1]["available"], before["available"] - 2)
        self.assertEqual(call("GET", f"/api/orders/{order['order_id']}"), (200, order))

    def test_a_cancelled_order_gives_its_stock_back(self):
        before = call("GET", "/api/products/widget")[1]["available"]
        order = self.place("widget", 1)[1]
        status, cancelled = call("DELETE", f"/api/orders/{order['order_id']}")
        self.assertEqual((status, cancelled["status"]), (200, "cancelled"))
        self.assertEqual(call("GET", "/api/products/widget")[1]["available"], before)

    def test_asking_for_more_than_is_in_stock_is_refused_with_what_is_left(self):
        available = call("GET", "/api/products/gizmo")[1]["available"]
        status, body = self.place("gizmo", available + 1)
        self.assertEqual((status, body["available"]), (409, available))

    def test_a_payment_declined_by_payments_keeps_the_stock(self):
        gadget = call("GET", "/api/products/gadget")[1]
        status, body = self.place("gadget", 60)  # 60 x 89.99 EUR is above payments' default limit
        self.assertEqual((status, body["error"]), (402, "payment declined"), body)
        self.assertEqual(call("GET", "/api/products/gadget")[1], gadget)

    def test_the_gateway_refuses_bad_input_at_the_edge(self):
        self.assertEqual(self.place("widget", 0)[0], 400)
        self.assertEqual(self.place("sprocket", 1)[0], 404)

    def test_the_gateway_reports_its_version_and_metrics(self):
        status, version = call("GET", "/version")
        self.assertEqual((status, version["service"]), (200, "gateway"))
        self.assertTrue(re.search(r'^shop_up\{service="gateway"\} 1$', call("GET", "/metrics")[1], re.MULTILINE))


if __name__ == "__main__":
    unittest.main()
