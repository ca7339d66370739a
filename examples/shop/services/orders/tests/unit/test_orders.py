"""orders' HTTP API, served in-process against stand-ins for inventory and payments.

The integration tests run the same flows against the real inventory and payments.
"""

import io
import socket
import unittest

import app
import shopkit


def serve(service):
    service.log_stream = io.StringIO()
    server = service.start_in_background()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class StandIns:
    """inventory and payments stand-ins that record the calls orders makes."""

    def __init__(self):
        self.calls, self.payment_status = [], 201
        inventory, payments = shopkit.Service("inventory", {}), shopkit.Service("payments", {})

        @inventory.route("POST", "/reservations")
        def reserve(req):
            self.calls.append(("reserve", req.body))
            if req.body["sku"] == "sprocket":
                return 404, {"error": "unknown sku"}
            if req.body["quantity"] > 5:
                return 409, {"error": "insufficient stock", "available": 5}
            remaining = 5 - req.body["quantity"]
            return 201, {"reservation_id": "res-standin", "unit_price_cents": 1250, "remaining": remaining}

        @inventory.route("DELETE", "/reservations/{reservation_id}")
        def release(req):
            self.calls.append(("release", req.params["reservation_id"]))
            return 200, {"released": req.params["reservation_id"], "remaining": 5}

        @payments.route("POST", "/authorizations")
        def authorize(req):
            self.calls.append(("authorize", req.body))
            if self.payment_status != 201:
                return self.payment_status, {"error": "declined: amount above limit"}
            return 201, {"auth_id": f"auth-for-{req.body['reference']}", "status": "authorized"}

        (self.inventory_server, self.inventory_url), (self.payments_server, self.payments_url) = (
            serve(inventory), serve(payments))

    def stop(self):
        for server in (self.inventory_server, self.payments_server):
            server.shutdown()
            server.server_close()


class OrdersApiTest(unittest.TestCase):
    def setUp(self):
        self.upstreams = StandIns()
        self.addCleanup(self.upstreams.stop)
        self.start_orders(self.upstreams.inventory_url, self.upstreams.payments_url)

    def start_orders(self, inventory_url, payments_url):
        server, self.url = serve(app.build({"INVENTORY_URL": inventory_url, "PAYMENTS_URL": payments_url}))
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)

    def order(self, sku="widget", quantity=2):
        return shopkit.request_json(self.url, "POST", "/orders", {"sku": sku, "quantity": quantity})

    def test_a_confirmed_order_carries_the_reservation_and_the_authorisation(self):
        status, order = self.order(quantity=2)
        self.assertEqual(status, 201)
        self.assertEqual(order["auth_id"], f"auth-for-{order['order_id']}")
        self.assertEqual((order["reservation_id"], order["remaining_stock"], order["amount_cents"]),
                         ("res-standin", 3, 2500))
        self.assertIn(("authorize", {"reference": order["order_id"], "amount_cents": 2500, "currency": "EUR"}),
                      self.upstreams.calls)
        self.assertEqual(shopkit.request_json(self.url, "GET", f"/orders/{order['order_id']}"), (200, order))

    def test_out_of_stock_is_refused_before_payment(self):
        self.assertEqual(self.order(quantity=6), (409, {"error": "out of stock", "sku": "widget", "available": 5}))
        self.assertEqual([call[0] for call in self.upstreams.calls], ["reserve"])

    def test_an_unknown_sku_is_not_found(self):
        self.assertEqual(self.order(sku="sprocket")[0], 404)

    def test_a_declined_payment_gives_the_reservation_back(self):
        self.upstreams.payment_status = 402
        status, body = self.order()
        self.assertEqual((status, body["error"]), (402, "payment declined"))
        self.assertEqual(self.upstreams.calls[-1], ("release", "res-standin"))

    def test_payments_unreachable_is_503_naming_payments_and_gives_the_reservation_back(self):
        self.start_orders(self.upstreams.inventory_url, closed_port_url())
        status, body = self.order()
        self.assertEqual((status, body["upstream"]), (503, "payments"))
        self.assertEqual(self.upstreams.calls[-1], ("release", "res-standin"))

    def test_inventory_unreachable_is_503_naming_inventory(self):
        self.start_orders(closed_port_url(), self.upstreams.payments_url)
        status, body = self.order()
        self.assertEqual((status, body["upstream"]), (503, "inventory"))
        self.assertIn("inventory unreachable", body["error"])

    def test_cancelling_gives_the_reservation_back_once(self):
        order = self.order()[1]
        status, cancelled = shopkit.request_json(self.url, "DELETE", f"/orders/{order['order_id']}")
        self.assertEqual((status, cancelled["status"], cancelled["remaining_stock"]), (200, "cancelled", 5))
        shopkit.request_json(self.url, "DELETE", f"/orders/{order['order_id']}")
        self.assertEqual(sum(call[0] == "release" for call in self.upstreams.calls), 1)

    def test_bad_orders_are_refused_naming_the_field(self):
        self.assertTrue(self.order(quantity=0)[1]["error"].startswith("quantity:"))
        self.assertEqual(shopkit.request_json(self.url, "POST", "/orders", {"quantity": 1})[0], 400)
        self.assertEqual(shopkit.request_json(self.url, "GET", "/orders/ord-missing")[0], 404)
        self.assertEqual(self.upstreams.calls, [])

    def test_upstream_calls_are_counted_in_metrics(self):
        self.order()
        text = shopkit.http_request(self.url, "GET", "/metrics")[1].decode()
        self.assertIn('shop_upstream_requests_total{service="orders",upstream="payments",outcome="201"} 1', text)


class OrdersSettingsTest(unittest.TestCase):
    def test_a_bad_upstream_url_names_the_variable(self):
        for name in ("INVENTORY_URL", "PAYMENTS_URL"):
            with self.assertRaises(shopkit.ConfigError) as caught:
                app.build({name: "inventory:8080"})
            self.assertTrue(str(caught.exception).startswith(f"{name}:"))

    def test_upstreams_default_to_their_service_names(self):
        self.assertEqual(app.build({}).upstreams,
                         {"inventory": "http://inventory:8080", "payments": "http://payments:8080"})


if __name__ == "__main__":
    unittest.main()
