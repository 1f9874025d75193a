"""The shared error/message body of the agent API (``codersdk.Response``, agent-api.md §2.5)."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

from dataclasses import dataclass

from agentconn.proto._codec import Model, Omit, key

__all__ = ["GREETING", "Response", "Validation"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation(Model):
    """One entry of ``validations``: ``{"field": …, "detail": …}``."""

    field: str = key("field")
    detail: str = key("detail")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(Model):
    """``{"message", "detail", "validations"}``; ``detail``/``validations`` omitted when empty.

    Every non-2xx JSON body of the API, and also the 200 bodies that only carry a message
    (write-file, signal, recreate (202), recording start, ``GET /``).
    """

    message: str = key("message")
    detail: str = key("detail", omit=Omit.EMPTY, default="")
    validations: list[Validation] = key("validations", omit=Omit.EMPTY, default_factory=list)


#: ``GET /`` → 200 with this body.
GREETING = Response(message="Hello from the agent!")
