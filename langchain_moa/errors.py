"""Exceptions raised by langchain-moa.

The hierarchy::

    MoAError                         base of everything raised here
    ├── ConfigurationError (ValueError)   bad step / router / model parameters, raised
    │   │                                 at construction; the message names the parameter
    │   └── MissingAPIKeyError            a provider's key is unset; ``.env_var`` names it
    ├── LayerFailedError              every call of an MoA step failed (or fewer than
    │                                 ``min_success`` succeeded); ``.errors`` lists each cause
    ├── AggregatorError               the Aggregate / Vote / Rank call failed; never
    │                                 replaced by a proposer's answer
    ├── LocalModelError               the bundled model is missing, corrupt or failed to start;
    │                                 the message says what to install or delete
    └── RouterError                   base of the provider router's errors
        ├── NoDeploymentAvailableError  every deployment failed, is disabled, or the
        │                               deadline passed while all were cooling down;
        │                               ``.errors`` maps deployment -> last error
        ├── DeploymentDisabledError     a permanent error (401/403 bad key, 404 unknown
        │                               model) disabled the deployment
        ├── InvalidRequestError         the request cannot be sent as given (a lone
        │                               surrogate in the prompt, a value the client
        │                               rejects); raised before anything is sent and
        │                               never counted against a deployment. Also a
        │                               ``langchain_core`` ``ModelInvalidRequestError``
        │                               (not retryable)
        └── StreamInterruptedError      a stream ended badly after its first token (cut,
                                        closed without ``finish_reason``); the tokens
                                        already yielded cannot be taken back. Also a
                                        ``langchain_core`` ``ModelAPIError`` (retryable)

Provider HTTP errors themselves are the SDK's (``openai.APIStatusError`` and friends);
the router classifies them (see :mod:`langchain_moa.router`).
"""

from __future__ import annotations

from typing import Any

from langchain_core.exceptions import ModelAPIError, ModelInvalidRequestError

__all__ = [
    "MoAError",
    "ConfigurationError",
    "MissingAPIKeyError",
    "LayerFailedError",
    "AggregatorError",
    "LocalModelError",
    "RouterError",
    "NoDeploymentAvailableError",
    "DeploymentDisabledError",
    "InvalidRequestError",
    "StreamInterruptedError",
]


class MoAError(Exception):
    """Base class of every exception raised by langchain-moa."""


class ConfigurationError(MoAError, ValueError):
    """A parameter is invalid; raised at construction, the message names it."""


class MissingAPIKeyError(ConfigurationError):
    """A provider's API key is not set.

    Attributes:
        env_var: the environment variable to set.
    """

    def __init__(self, message: str, env_var: str) -> None:
        super().__init__(message)
        self.env_var = env_var


class LayerFailedError(MoAError):
    """An MoA step produced fewer successful candidates than its quorum.

    Attributes:
        step: the step's name (``"Propose"``, ``"Synthesize"``, ...).
        errors: one ``(agent_name, exception_or_message)`` pair per failed call.
    """

    def __init__(self, step: str, errors: list[tuple[str, Any]], needed: int = 1) -> None:
        self.step = step
        self.errors = errors
        self.needed = needed
        causes = "; ".join(f"{agent}: {err}" for agent, err in errors) or "no calls were made"
        super().__init__(
            f"{step} failed: fewer than {needed} successful call(s) "
            f"({len(errors)} failed): {causes}"
        )


class AggregatorError(MoAError):
    """The single-agent step (Aggregate, Vote, Rank) failed.

    The pipeline raises instead of falling back to a proposer's answer.

    Attributes:
        step: the step's name.
        agent: the agent's name.
        cause: the underlying exception or message.
    """

    def __init__(self, step: str, agent: str, cause: Any) -> None:
        self.step = step
        self.agent = agent
        self.cause = cause
        super().__init__(f"{step} with {agent} failed: {cause}")


class LocalModelError(MoAError):
    """The bundled local model cannot be used; the message says how to fix it."""


class RouterError(MoAError):
    """Base class of the provider router's errors."""


class NoDeploymentAvailableError(RouterError):
    """No deployment could serve the request.

    Attributes:
        errors: deployment name -> last error (exception or skip reason).
    """

    def __init__(self, message: str, errors: dict[str, Any] | None = None) -> None:
        self.errors = dict(errors or {})
        detail = "; ".join(f"{k}: {v}" for k, v in self.errors.items())
        super().__init__(f"{message}" + (f" ({detail})" if detail else ""))


class DeploymentDisabledError(RouterError):
    """A deployment was disabled by a permanent error (bad key, unknown model)."""


class InvalidRequestError(RouterError, ModelInvalidRequestError):
    """The request cannot be sent as given: it failed to encode or validate on the
    client (e.g. a lone surrogate ``"\\ud800"`` in the prompt). Raised at once, before
    anything is sent; no deployment's health or stats change. ``__cause__`` is the
    original error. LangChain's ``ModelRetryMiddleware`` does not retry it."""


class StreamInterruptedError(RouterError, ModelAPIError):
    """A streamed answer broke after its first token: the connection was cut, or the
    stream ended without a ``finish_reason``. The chunks already yielded are all there
    is; the router cannot fall over without repeating them.

    Attributes:
        deployment: the deployment that was streaming.
    """

    def __init__(self, message: str, deployment: str = "") -> None:
        super().__init__(message)
        self.deployment = deployment
