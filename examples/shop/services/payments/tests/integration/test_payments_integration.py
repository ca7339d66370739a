"""payments running in its container, with the key it was deployed with.

Environment: PAYMENTS_URL (http://payments:8080); PAYMENTS_API_KEY, when the runner passes the same
secret, lets the tests prove the container authorises with exactly that key.
"""

import hashlib
import hmac
import os
import re
import secrets
import unittest

import shopkit

PAYMENTS_URL = os.environ.get("PAYMENTS_URL", "http://payments:8080")


def setUpModule():
    shopkit.wait_until_healthy({"payments": PAYMENTS_URL})


def authorize(reference, amount_cents, currency="EUR"):
    body = {"reference": reference, "amount_cents": amount_cents, "currency": currency}
    return shopkit.request_json(PAYMENTS_URL, "POST", "/authorizations", body)


class PaymentsIntegrationTest(unittest.TestCase):
    def test_authorising_again_returns_the_same_id_and_other_terms_another(self):
        reference = f"it-{secrets.token_hex(4)}"
        status, first = authorize(reference, 1999)
        self.assertEqual((status, first["status"]), (201, "authorized"))
        self.assertRegex(first["auth_id"], r"^auth-[0-9a-f]{24}$")
        self.assertEqual(authorize(reference, 1999)[1]["auth_id"], first["auth_id"])
        self.assertNotEqual(authorize(reference, 2000)[1]["auth_id"], first["auth_id"])
        self.assertNotEqual(authorize(reference + "x", 1999)[1]["auth_id"], first["auth_id"])

    def test_the_running_key_is_the_deployed_one(self):
        status, body = shopkit.request_json(PAYMENTS_URL, "GET", "/secret-hash")
        self.assertEqual(status, 200)
        self.assertRegex(body["sha256"], r"^[0-9a-f]{64}$")
        key = os.environ.get("PAYMENTS_API_KEY")
        if key:  # only when the runner shares the secret with this container
            self.assertEqual(body["sha256"], hashlib.sha256(key.encode()).hexdigest())
            expected = hmac.new(key.encode(), b"it-key:1234:EUR", hashlib.sha256).hexdigest()[:24]
            self.assertEqual(authorize("it-key", 1234)[1]["auth_id"], f"auth-{expected}")

    def test_an_amount_above_the_limit_is_declined_with_the_limit(self):
        status, body = authorize(f"it-{secrets.token_hex(4)}", 10**12)
        self.assertEqual(status, 402)
        self.assertLess(body["limit_cents"], 10**12)

    def test_a_bad_currency_is_refused(self):
        status, body = authorize("it-bad", 100, currency="euros")
        self.assertEqual(status, 400)
        self.assertTrue(re.match(r"^currency:", body["error"]))


if __name__ == "__main__":
    unittest.main()
