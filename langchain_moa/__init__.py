"""langchain-moa: Mixture-of-Agents pipelines and a multi-provider LLM router for LangChain.

Every MoA step is a LangChain Runnable; join them with ``|``::

    from langchain_moa import Propose, Aggregate

    moa = Propose(["local/qwen2.5-coder-0.5b"] * 3) | Aggregate("local/qwen2.5-coder-0.5b")
    moa.invoke("What is 17 * 23?").content
"""

from langchain_moa._budget import Budget, BudgetExceededError, with_budget

# from the private modules, not langchain_moa.local, so `python -m langchain_moa.local build`
# runs that module fresh (runpy warns when the package import already loaded it)
from langchain_moa._local._clients import chat_model_for_base_url
from langchain_moa._local._registry import (
    aget_local_chat_model,
    chat_model_for_gguf,
    get_local_chat_model,
)
from langchain_moa._local._server import LocalServer
from langchain_moa._run import pipeline, run
from langchain_moa.chat_model import MoAChatModel
from langchain_moa.client_model import ClientChatModel
from langchain_moa.errors import (
    AggregatorError,
    ConfigurationError,
    DeploymentDisabledError,
    InvalidRequestError,
    LayerFailedError,
    LocalModelError,
    MissingAPIKeyError,
    MoAError,
    NoDeploymentAvailableError,
    RouterError,
    StreamInterruptedError,
)
from langchain_moa.history import MoAHistoryHandler, StepRecord
from langchain_moa.pricing import PRICES, cost_usd
from langchain_moa.providers import (
    PROVIDERS,
    parse_model_name,
    register_logical_model,
    register_provider,
    resolve_logical_model,
)
from langchain_moa.router import (
    Deployment,
    InMemoryStore,
    ProviderRouter,
    RedisStore,
    RetryPolicy,
    RouterStore,
)
from langchain_moa.steps import (
    AdaptiveMajorityVote,
    Aggregate,
    ChoiceAnswer,
    Dropout,
    Filter,
    Fusion,
    FusionAnalysis,
    JsonFieldAnswer,
    MajorityVote,
    Map,
    NumberAnswer,
    Propose,
    Rank,
    RecursiveAggregate,
    Refine,
    RegexAnswer,
    Sample,
    SequentialAggregate,
    Shuffle,
    Synthesize,
    Take,
    Vote,
)
from langchain_moa.types import CallRecord, Candidate, MoAState

__all__ = [
    # steps
    "Propose",
    "Synthesize",
    "Aggregate",
    "Refine",
    "Rank",
    "Vote",
    "Shuffle",
    "Dropout",
    "Sample",
    "Take",
    "Filter",
    "Map",
    "MajorityVote",
    "AdaptiveMajorityVote",
    "NumberAnswer",
    "ChoiceAnswer",
    "RegexAnswer",
    "JsonFieldAnswer",
    "Fusion",
    "FusionAnalysis",
    "RecursiveAggregate",
    "SequentialAggregate",
    # running and history
    "pipeline",
    "run",
    "Budget",
    "BudgetExceededError",
    "with_budget",
    "MoAHistoryHandler",
    "StepRecord",
    "MoAState",
    "Candidate",
    "CallRecord",
    "ClientChatModel",
    "MoAChatModel",
    # local models and self-hosted servers
    "LocalServer",
    "get_local_chat_model",
    "aget_local_chat_model",
    "chat_model_for_gguf",
    "chat_model_for_base_url",
    # router
    "ProviderRouter",
    "Deployment",
    "RetryPolicy",
    "RouterStore",
    "InMemoryStore",
    "RedisStore",
    # providers and prices
    "PROVIDERS",
    "parse_model_name",
    "register_provider",
    "register_logical_model",
    "resolve_logical_model",
    "PRICES",
    "cost_usd",
    # errors
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
