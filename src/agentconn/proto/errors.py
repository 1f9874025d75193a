"""Errors raised while decoding agent API JSON bodies.

``from_json`` never lets a raw ``KeyError``/``TypeError``/orjson error escape: every problem with
an incoming body is a :class:`BadRequest` that names the offending field (dotted path, list
indices in brackets, e.g. ``files[0].edits[1].old_text``). The agent turns it into the spec's 400
``codersdk.Response`` body (agent-api.md §2.5) with :meth:`BadRequest.to_response`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentconn.errors import AgentConnError

if TYPE_CHECKING:
    from agentconn.proto.common import Response

__all__ = ["INVALID_JSON_MESSAGE", "BadRequest", "ProtocolError"]

#: The ``message`` of the agent's 400 for an undecodable JSON request body (agent-api.md §2.5).
INVALID_JSON_MESSAGE = "Request body must be valid JSON."


class ProtocolError(AgentConnError, ValueError):
    """A message of the agent API does not have the shape the spec requires."""


class BadRequest(ProtocolError):
    """A JSON body failed to decode or validate.

    ``field`` is the dotted path of the bad field (``""`` when the body as a whole is bad, e.g.
    not JSON or not an object); ``message`` says what is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def to_response(self) -> Response:
        """The 400 body the agent sends for this error (``Request body must be valid JSON.``)."""
        from agentconn.proto.common import Response, Validation

        if not self.field:
            return Response(message=INVALID_JSON_MESSAGE, detail=self.message)
        return Response(
            message=INVALID_JSON_MESSAGE,
            detail=str(self),
            validations=[Validation(field=self.field, detail=self.message)],
        )
