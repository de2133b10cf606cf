"""The fake chat models of the MoA unit tests: the public :mod:`langchain_moa.testing`."""

from langchain_moa.testing import Gauge, Reply, ScriptedChat, ToolJudge, chat, text_of

__all__ = ["Gauge", "Reply", "ScriptedChat", "ToolJudge", "chat", "text_of"]
