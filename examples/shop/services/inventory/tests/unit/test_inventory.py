"""inventory's HTTP API, served in-process: stock, reservations, releases, bad input, operations."""

import io
import unittest

import app
import shopkit


class InventoryApiTest(unittest.TestCase):
    def setUp(self):
        self.service = app.build({"INITIAL_STOCK": "gizmo=2"})
        self.service.log_stream = io.StringIO()
        server = self.service.start_in_background()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def call(self, method, path, body=None):
        return shopkit.request_json(self.url, method, path, body)

    def test_stock_shows_units_and_price_of_a_catalogue_sku(self):
        self.assertEqual(
            self.call("GET", "/stock/widget"), (200, {"sku": "widget", "available": 1000, "unit_price_cents": 1250})
        )

    def test_a_reservation_takes_units_from_stock(self):
        status, body = self.call("POST", "/reservations", {"sku": "widget", "quantity": 3})
        self.assertEqual(status, 201)
        self.assertTrue(body["reservation_id"].startswith("res-"))
        self.assertEqual((body["remaining"], body["unit_price_cents"]), (997, 1250))
        self.assertEqual(self.call("GET", "/stock/widget")[1]["available"], 997)

    def test_reserving_more_than_is_left_is_refused_with_what_is_left(self):
        status, body = self.call("POST", "/reservations", {"sku": "gizmo", "quantity": 3})
        self.assertEqual((status, body["available"]), (409, 2))
        self.assertEqual(self.call("GET", "/stock/gizmo")[1]["available"], 2)

    def test_releasing_a_reservation_puts_its_units_back_once(self):
        reservation = self.call("POST", "/reservations", {"sku": "gizmo", "quantity": 2})[1]
        status, body = self.call("DELETE", f"/reservations/{reservation['reservation_id']}")
        self.assertEqual((status, body["remaining"]), (200, 2))
        self.assertEqual(self.call("DELETE", f"/reservations/{reservation['reservation_id']}")[0], 404)

    def test_unknown_sku_is_not_found(self):
        self.assertEqual(self.call("GET", "/stock/sprocket")[0], 404)
        self.assertEqual(self.call("POST", "/reservations", {"sku": "sprocket", "quantity": 1})[0], 404)

    def test_bad_reservations_are_refused_naming_the_field(self):
        for body, field in (({"sku": "widget", "quantity": "2"}, "quantity"), ({"quantity": 1}, "sku"),
                            ({"sku": "widget", "quantity": 0}, "quantity")):
            status, reply = self.call("POST", "/reservations", body)
            self.assertEqual(status, 400, body)
            self.assertTrue(reply["error"].startswith(f"{field}:"), reply)

    def test_operational_endpoints_answer(self):
        self.assertEqual(self.call("GET", "/healthz"), (200, {"service": "inventory", "status": "ok"}))
        self.assertEqual(self.call("GET", "/version")[1]["service"], "inventory")
        self.call("POST", "/reservations", {"sku": "widget", "quantity": 1})
        status, text, _headers = shopkit.http_request(self.url, "GET", "/metrics")
        self.assertIn(
            'shop_http_requests_total{service="inventory",route="/reservations",method="POST",code="201"} 1',
            text.decode(),
        )


class InitialStockTest(unittest.TestCase):
    def test_initial_stock_overrides_the_catalogue_default(self):
        self.assertEqual(app.parse_initial_stock("widget=7, gizmo=0")["widget"], 7)

    def test_bad_initial_stock_names_the_variable_and_the_item(self):
        for raw, fragment in (("widget", "'widget'"), ("widget=-1", "'widget=-1'"), ("sprocket=3", "'sprocket'")):
            with self.assertRaises(shopkit.ConfigError) as caught:
                app.build({"INITIAL_STOCK": raw})
            self.assertIn("INITIAL_STOCK", str(caught.exception))
            self.assertIn(fragment, str(caught.exception))


if __name__ == "__main__":
    unittest.main()
