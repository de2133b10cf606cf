"""The provider router: one chat model in front of many deployments.

Public names::

    ProviderRouter      the router (a LangChain BaseChatModel)
    Deployment          one model on one provider, with price, limits, weight
    RetryPolicy         per-error-kind retry / failover policy
    RouterStore         interface of the shared limiter / health state
    InMemoryStore       process-local store (default)
    RedisStore          store shared across processes through Redis
    Limits              rpm / tpm / max_concurrency of one scope
    classify_error      exception -> ErrorInfo(kind, status, retry_after, message)
    parse_retry_after   headers -> seconds (retry-after-ms, Retry-After seconds or HTTP date)
    STRATEGIES          the strategy names

See :mod:`langchain_moa.router._router` for how one request is routed and
:mod:`langchain_moa.router._health` for the error table.
"""

from langchain_moa.router._deployment import Deployment
from langchain_moa.router._health import ErrorInfo, RetryPolicy, classify_error, parse_retry_after
from langchain_moa.router._limits import Limits
from langchain_moa.router._router import ProviderRouter
from langchain_moa.router._store import InMemoryStore, RedisStore, RouterStore
from langchain_moa.router._strategies import STRATEGIES

__all__ = [
    "ProviderRouter",
    "Deployment",
    "RetryPolicy",
    "ErrorInfo",
    "RouterStore",
    "InMemoryStore",
    "RedisStore",
    "Limits",
    "classify_error",
    "parse_retry_after",
    "STRATEGIES",
]
