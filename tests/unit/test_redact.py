"""redact/scrub: a secret, whole or cut, is removed from messages and from an exception's printed form."""

from __future__ import annotations

import traceback

from mindscript.redact import REDACTED, redact, scrub

KEY = "sk-proj-LEAKCHECKopenai7f3a91c0d2e4b6a8"


def test_whole_cut_and_embedded_keys_are_redacted() -> None:
    assert redact(f"Incorrect API key provided: {KEY}.", [KEY]) == f"Incorrect API key provided: {REDACTED}"
    assert redact(f"key {KEY[:20]} was cut", [KEY]) == f"key {REDACTED} was cut"
    assert redact(f"GET /v1?apikey={KEY}&x=1", [KEY]) == f"GET /v1?{REDACTED}&x=1"
    assert KEY[-12:] not in redact(f"ends with ...{KEY[-12:]}", [KEY])


def test_other_text_is_left_alone() -> None:
    text = "OPENAI_API_KEY: rejected by OpenAI (HTTP 401 invalid_api_key: masked sk-****b6a8)"
    assert redact(text, [KEY, None, ""]) == text
    assert redact(text, []) == text and redact("", [KEY]) == ""


class VendorError(Exception):
    def __init__(self, message: str, body: dict) -> None:
        super().__init__(message)
        self.message = message
        self.body = body

    def __str__(self) -> str:  # like SDK errors that print their body
        return f"{self.message} body: {self.body}"


def test_scrub_cleans_what_a_traceback_prints_and_keeps_the_chain() -> None:
    vendor = VendorError(f"401 for {KEY}", {"error": {"message": f"bad key {KEY}", "code": 401}})
    try:
        try:
            raise vendor
        except VendorError as exc:
            raise RuntimeError("translated") from scrub(exc, [KEY])
    except RuntimeError as outer:
        printed = "".join(traceback.format_exception(outer))
        assert outer.__cause__ is vendor
    assert "VendorError" in printed and "401 for" in printed and "code" in printed
    assert KEY not in printed and KEY[9:30] not in printed
    assert vendor.body["error"]["code"] == 401
