"""payments' HTTP API, served in-process: authorisation ids, declines, bad input, the secret."""

import hashlib
import io
import os
import tempfile
import unittest

import app
import shopkit

KEY = "unit-test-key"


class PaymentsApiTest(unittest.TestCase):
    def setUp(self):
        self.service = app.build({"PAYMENTS_API_KEY": KEY, "MAX_AMOUNT_CENTS": "10000"})
        self.service.log_stream = io.StringIO()
        server = self.service.start_in_background()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def authorize(self, reference="ord-1", amount_cents=2500, currency="EUR"):
        body = {"reference": reference, "amount_cents": amount_cents, "currency": currency}
        return shopkit.request_json(self.url, "POST", "/authorizations", body)

    def test_an_authorisation_id_is_keyed_by_the_secret(self):
        status, body = self.authorize()
        self.assertEqual((status, body["status"]), (201, "authorized"))
        self.assertEqual(body["auth_id"], app.authorization_id(KEY, "ord-1", 2500, "EUR"))
        self.assertNotEqual(body["auth_id"], app.authorization_id("another-key", "ord-1", 2500, "EUR"))

    def test_retrying_an_authorisation_returns_the_same_id_and_another_amount_another_id(self):
        first, again, other = self.authorize()[1], self.authorize()[1], self.authorize(amount_cents=2501)[1]
        self.assertEqual(first["auth_id"], again["auth_id"])
        self.assertNotEqual(first["auth_id"], other["auth_id"])

    def test_an_amount_above_the_limit_is_declined(self):
        self.assertEqual(self.authorize(amount_cents=10001), (402, {"error": "declined: amount above limit",
                                                                    "limit_cents": 10000}))

    def test_bad_authorisations_are_refused_naming_the_field(self):
        for kwargs, field in (({"amount_cents": 0}, "amount_cents"), ({"amount_cents": "10"}, "amount_cents"),
                              ({"currency": "euro"}, "currency"), ({"reference": " "}, "reference")):
            status, body = self.authorize(**kwargs)
            self.assertEqual(status, 400, kwargs)
            self.assertTrue(body["error"].startswith(f"{field}:"), body)

    def test_secret_hash_proves_the_key_without_showing_it(self):
        status, body = shopkit.request_json(self.url, "GET", "/secret-hash")
        self.assertEqual((status, body), (200, {"sha256": hashlib.sha256(KEY.encode()).hexdigest()}))
        self.assertNotIn(KEY, self.service.log_stream.getvalue())

    def test_operational_endpoints_answer(self):
        self.assertEqual(shopkit.request_json(self.url, "GET", "/healthz")[0], 200)
        self.assertEqual(shopkit.request_json(self.url, "GET", "/version")[1]["service"], "payments")


class PaymentsSettingsTest(unittest.TestCase):
    def test_payments_refuses_to_start_without_its_key(self):
        with self.assertRaises(shopkit.ConfigError) as caught:
            app.build({})
        self.assertIn("PAYMENTS_API_KEY", str(caught.exception))

    def test_the_key_is_read_from_the_file_its_variable_names_before_the_variable(self):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "PAYMENTS_API_KEY")
            with open(path, "w", encoding="utf-8") as file:
                file.write(KEY + "\n")
            self.assertEqual(app.read_key({"PAYMENTS_API_KEY_FILE": path, "PAYMENTS_API_KEY": "other"}), KEY)
            with self.assertRaises(shopkit.ConfigError) as caught:
                app.read_key({"PAYMENTS_API_KEY_FILE": os.path.join(folder, "missing")})
            self.assertIn("PAYMENTS_API_KEY_FILE: cannot read", str(caught.exception))
            self.assertNotIn(KEY, str(caught.exception))
        self.assertEqual(app.read_key({"PAYMENTS_API_KEY": KEY}), KEY)

    def test_a_bad_limit_names_the_variable(self):
        with self.assertRaises(shopkit.ConfigError) as caught:
            app.build({"PAYMENTS_API_KEY": KEY, "MAX_AMOUNT_CENTS": "lots"})
        self.assertIn("MAX_AMOUNT_CENTS", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
