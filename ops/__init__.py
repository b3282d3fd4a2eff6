"""Operators' endpoints: liveness, readiness and the OpenAPI document (a transport, like the API)."""
