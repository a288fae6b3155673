"""Pointsman's Python client: `Client` / `AsyncClient` for the `pointsman.v1.Router` gRPC service,
`pointsman.openai.map_chat` (an OpenAI chat request as Route sees it), and (`pointsman.litellm`,
with the `litellm` extra) a LiteLLM integration."""
from pointsman.client import (
    AsyncClient,
    Candidate,
    Client,
    Decision,
    NothingToRoute,
    PointsmanError,
    feedback_request,
    retryable,
    route_request,
)
from pointsman.openai import map_chat

__all__ = [
    "AsyncClient",
    "Candidate",
    "Client",
    "Decision",
    "NothingToRoute",
    "PointsmanError",
    "feedback_request",
    "map_chat",
    "retryable",
    "route_request",
]
__version__ = "0.1.0"
