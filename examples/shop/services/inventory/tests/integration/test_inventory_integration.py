"""inventory running in its container: reservations change the stock it reports, releases restore it.

Environment: INVENTORY_URL (http://inventory:8080). Writes nothing but through inventory's own API.
"""

import os
import re
import unittest

import shopkit

INVENTORY_URL = os.environ.get("INVENTORY_URL", "http://inventory:8080")


def setUpModule():
    shopkit.wait_until_healthy({"inventory": INVENTORY_URL})


def call(method, path, body=None):
    return shopkit.request_json(INVENTORY_URL, method, path, body)


class InventoryIntegrationTest(unittest.TestCase):
    def test_a_reservation_and_its_release_move_the_stock_inventory_reports(self):
        before = call("GET", "/stock/widget")[1]["available"]
        status, reservation = call("POST", "/reservations", {"sku": "widget", "quantity": 2})
        self.assertEqual((status, reservation["remaining"]), (201, before - 2))
        self.assertEqual(call("GET", "/stock/widget")[1]["available"], before - 2)
        self.assertEqual(call("DELETE", f"/reservations/{reservation['reservation_id']}")[1]["remaining"], before)
        self.assertEqual(call("GET", "/stock/widget")[1]["available"], before)

    def test_reserving_more_than_is_left_reports_what_is_left(self):
        available = call("GET", "/stock/gizmo")[1]["available"]
        status, body = call("POST", "/reservations", {"sku": "gizmo", "quantity": available + 1})
        self.assertEqual((status, body["available"]), (409, available))

    def test_version_and_metrics_describe_the_running_process(self):
        status, version = call("GET", "/version")
        self.assertEqual((status, version["service"]), (200, "inventory"))
        call("GET", "/stock/widget")
        text = shopkit.http_request(INVENTORY_URL, "GET", "/metrics")[1].decode()
        self.assertRegex(text, r'shop_http_requests_total\{service="inventory",route="/stock/\{sku\}",method="GET",'
                               r'code="200"\} [1-9]')
        self.assertIn(f'git_sha="{version["git_sha"]}"', text)
        self.assertTrue(re.search(r'^shop_up\{service="inventory"\} 1$', text, re.MULTILINE))


if __name__ == "__main__":
    unittest.main()
