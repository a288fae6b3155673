"""Pointsman's Python client: `Client` / `AsyncClient` for the `pointsman.v1.Router` gRPC service,
and (`pointsman.litellm`, with the `litellm` extra) a LiteLLM integration."""
from pointsman.client import AsyncClient, Candidate, Client, Decision, PointsmanError, feedback_request, route_request

__all__ = ["AsyncClient", "Candidate", "Client", "Decision", "PointsmanError", "feedback_request", "route_request"]
__version__ = "0.1.0"
