"""The core-platform adapter: signed JSON over HTTP (see `bridge/signing.py`), non-blocking."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from bridge.signing import sign

log = logging.getLogger("zhangban.bridge")


class PlatformError(Exception):
    """The platform refused or could not be reached; `retryable` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.retryable, self.status = retryable, status


class PlatformClient:
    """Calls the core platform's case API with our app key and secret."""

    def __init__(self, *, base_url: str, app_key: str, secret: str, http: httpx.AsyncClient):
        self.base_url, self.app_key, self._secret, self._http = base_url.rstrip("/"), app_key, secret, http

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        prefix = httpx.URL(self.base_url).raw_path.decode().rstrip("/")
        headers = sign(method, prefix + path, body, app_key=self.app_key, secret=self._secret)
        headers["Content-Type"] = "application/json; charset=utf-8"
        try:
            response = await self._http.request(method, self.base_url + path, content=body, headers=headers, timeout=10)
        except httpx.TransportError as exc:
            raise PlatformError(f"platform unreachable: {type(exc).__name__}", retryable=True) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise PlatformError(
                f"platform answered {response.status_code}", retryable=True, status=response.status_code
            )
        if response.status_code >= 400:
            raise PlatformError(
                f"platform refused: {response.status_code} {response.text[:200]}",
                retryable=False,
                status=response.status_code,
            )
        try:
            return response.json()
        except ValueError:
            raise PlatformError("platform answered non-JSON", retryable=True) from None

    async def submit_case(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Hands a case over; the platform deduplicates by our case number."""
        return await self._call("POST", "/api/cases", payload)

    async def withdraw_case(self, case_no: str, *, reason: str = "") -> dict[str, Any]:
        """Withdraws a case the platform has not accepted (409 once it has, 404 if never received)."""
        return await self._call("POST", f"/api/cases/{case_no}/withdraw", {"reason": reason} if reason else {})

    async def resubmit_case(self, case_no: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"/api/cases/{case_no}/resubmit", payload)

    async def case_status(self, case_no: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/cases/{case_no}")

    async def fee_paid(self, case_no: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Tells the platform a fee was paid; idempotent at the platform by out_trade_no."""
        return await self._call("POST", f"/api/cases/{case_no}/fee-paid", payload)

    async def request_receipt(self, case_no: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Asks for the fee's e-receipt (财政电子票据): {"receipt_no", "verify_url", "issued_at"};
        the same out_trade_no again answers the same receipt."""
        return await self._call("POST", f"/api/cases/{case_no}/receipt", payload)

    async def evaluation(self, case_no: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Relays a case's evaluation (好差评) to the provincial system; idempotent there by case_no."""
        return await self._call("POST", f"/api/cases/{case_no}/evaluation", payload)
