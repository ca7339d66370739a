"""gateway's public API, served in-process against a stand-in for orders.

The integration tests run the same requests against the real orders and its dependencies.
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


class GatewayApiTest(unittest.TestCase):
    def setUp(self):
        self.orders_calls, self.orders_status = [], 201
        orders = shopkit.Service("orders", {})

        @orders.route("POST", "/orders")
        def place_order(req):
            self.orders_calls.append(req.body)
            return self.orders_status, {"order_id": "ord-standin", "status": "confirmed", **req.body}

        @orders.route("GET", "/orders/{order_id}")
        def get_order(req):
            return 404, {"error": f"unknown order {req.params['order_id']!r}"}

        orders_server, orders_url = serve(orders)
        self.addCleanup(orders_server.server_close)
        self.addCleanup(orders_server.shutdown)
        self.start_gateway(orders_url)

    def start_gateway(self, orders_url):
        server, self.url = serve(app.build({"ORDERS_URL": orders_url, "MAX_QUANTITY": "10"}))
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)

    def test_an_order_is_passed_to_orders_and_its_answer_returned(self):
        status, body = shopkit.request_json(self.url, "POST", "/api/orders", {"sku": "widget", "quantity": 2})
        self.assertEqual((status, body["order_id"]), (201, "ord-standin"))
        self.assertEqual(self.orders_calls, [{"sku": "widget", "quantity": 2}])

    def test_client_errors_of_orders_pass_through(self):
        self.assertEqual(shopkit.request_json(self.url, "GET", "/api/orders/ord-x")[0], 404)

    def test_a_failure_inside_orders_becomes_a_502(self):
        self.orders_status = 503
        status, body = shopkit.request_json(self.url, "POST", "/api/orders", {"sku": "widget", "quantity": 1})
        self.assertEqual((status, body["upstream"]), (502, "orders"))

    def test_orders_unreachable_is_503(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.start_gateway(closed)
        status, body = shopkit.request_json(self.url, "POST", "/api/orders", {"sku": "widget", "quantity": 1})
        self.assertEqual((status, body["upstream"]), (503, "orders"))

    def test_the_edge_refuses_bad_quantities_without_calling_orders(self):
        for quantity in (0, 11, "3"):
            body = {"sku": "widget", "quantity": quantity}
            status, body = shopkit.request_json(self.url, "POST", "/api/orders", body)
            self.assertEqual(status, 400, quantity)
            self.assertTrue(body["error"].startswith("quantity:"), body)
        self.assertEqual(self.orders_calls, [])

    def test_a_request_body_that_is_not_a_json_object_is_refused(self):
        status, body = shopkit.request_json(self.url, "POST", "/api/orders", ["widget", 1])
        self.assertEqual(status, 400)

    def test_unknown_routes_and_methods(self):
        self.assertEqual(shopkit.request_json(self.url, "GET", "/api/nothing")[0], 404)
        self.assertEqual(shopkit.request_json(self.url, "PUT", "/api/orders/ord-1")[0], 405)


class GatewaySettingsTest(unittest.TestCase):
    def test_orders_defaults_to_its_service_name(self):
        self.assertEqual(app.build({}).upstreams, {"orders": "http://orders:8080"})

    def test_bad_settings_name_the_variable(self):
        for env, name in (({"ORDERS_URL": "ftp://orders"}, "ORDERS_URL"), ({"MAX_QUANTITY": "0"}, "MAX_QUANTITY"),
                          ({"PORT": "http"}, "PORT"), ({"HEALTHZ_STATUS": "ok"}, "HEALTHZ_STATUS")):
            with self.assertRaises(shopkit.ConfigError) as caught:
                app.build(env)
            self.assertTrue(str(caught.exception).startswith(f"{name}:"), caught.exception)


if __name__ == "__main__":
    unittest.main()
