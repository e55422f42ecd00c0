"""``FleetAgent``: the session's DSPy program, a ReAct loop over the session's documents."""

from __future__ import annotations

from collections.abc import Callable

import dspy


class Respond(dspy.Signature):
    """Answer the user's message. When it is about an attached document, use the tools to
    search and read the document, and answer from what you read. Be brief and concrete."""

    message: str = dspy.InputField(desc="the user's message")
    documents: str = dspy.InputField(desc="documents attached to this session: name (size)")
    findings: str = dspy.InputField(
        desc="what a recursive sub-model already found in documents too large to read here"
    )
    answer: str = dspy.OutputField(desc="the reply to the user")


class FleetAgent(dspy.Module):
    def __init__(self, tools: list[Callable[..., str]], max_iters: int = 5) -> None:
        super().__init__()
        self.react = dspy.ReAct(Respond, tools=tools, max_iters=max_iters)

    def forward(self, message: str, documents: str, findings: str = "") -> dspy.Prediction:
        return self.react(message=message, documents=documents, findings=findings or "(none)")

    def respond(self, message: str, documents: str, findings: str = "") -> str:
        """Run one turn and return the answer text."""
        return str(self(message=message, documents=documents, findings=findings).answer)
