"""payments: authorises an amount for an order reference and answers with an authorisation id.

The id is an HMAC of the reference, amount and currency keyed with PAYMENTS_API_KEY, so retrying an
authorisation returns the same id and only a payments process holding the real key can produce it.

Settings (besides those in shopkit.py):
  PAYMENTS_API_KEY_FILE  file holding the secret key (release-graph delivers secrets as files, /run/secrets/<NAME>)
  PAYMENTS_API_KEY       the secret key itself, when no file is named (required one way or the other; the
                         service refuses to start without it)
  MAX_AMOUNT_CENTS       amounts above this are declined (500000)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

import shopkit

CURRENCY = re.compile(r"^[A-Z]{3}$")


def authorization_id(key: str, reference: str, amount_cents: int, currency: str) -> str:
    message = f"{reference}:{amount_cents}:{currency}".encode()
    return "auth-" + hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:24]


def read_key(env: Mapping[str, str]) -> str:
    """The secret key: from the file PAYMENTS_API_KEY_FILE names (a trailing newline dropped), else the variable."""
    path = env.get("PAYMENTS_API_KEY_FILE", "")
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                key = file.read().rstrip("\r\n")
        except OSError as exc:
            raise shopkit.ConfigError(f"PAYMENTS_API_KEY_FILE: cannot read {path}: {exc.strerror}") from None
        if not key:
            raise shopkit.ConfigError(f"PAYMENTS_API_KEY_FILE: {path} is empty")
        return key
    key = env.get("PAYMENTS_API_KEY", "")
    if not key:
        raise shopkit.ConfigError("PAYMENTS_API_KEY: required (the secret authorisation ids derive from), not set "
                                  "(nor PAYMENTS_API_KEY_FILE naming a file that holds it)")
    return key


def build(env: Mapping[str, str]) -> shopkit.Service:
    service = shopkit.Service("payments", env)
    key = read_key(env)
    max_amount = shopkit.env_int(env, "MAX_AMOUNT_CENTS", 500_000, 1, 10**12)

    @service.route("POST", "/authorizations")
    def authorize(req: shopkit.Request) -> shopkit.Reply:
        shopkit.require_fields(req.body, reference=str, amount_cents=int, currency=str)
        reference, amount, currency = req.body["reference"], req.body["amount_cents"], req.body["currency"]
        if not reference.strip():
            raise shopkit.HttpError(400, "reference: expected a non-empty string")
        if amount < 1:
            raise shopkit.HttpError(400, f"amount_cents: expected at least 1, got {amount}")
        if not CURRENCY.match(currency):
            raise shopkit.HttpError(400, f"currency: expected an ISO 4217 code like EUR, got {currency!r}")
        if amount > max_amount:
            raise shopkit.HttpError(402, "declined: amount above limit", limit_cents=max_amount)
        return 201, {
            "auth_id": authorization_id(key, reference, amount, currency),
            "reference": reference,
            "amount_cents": amount,
            "currency": currency,
            "status": "authorized",
        }

    # Lets a test prove the secret reached the container without the value ever being printed.
    @service.route("GET", "/secret-hash")
    def secret_hash(_req: shopkit.Request) -> shopkit.Reply:
        return 200, {"sha256": hashlib.sha256(key.encode()).hexdigest()}

    return service


if __name__ == "__main__":
    shopkit.main(build)
