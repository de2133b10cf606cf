"""``get_graph()`` of an LLM step: the step, each of its agents, its output."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.graph import Graph


def step_graph(step: Any, config: RunnableConfig | None = None) -> Graph:
    """``input -> step -> agent_0 .. agent_n -> output``, agents named as in the
    history (their model strings or model ids).

    In a pipeline's ``get_graph()`` the input and output nodes between steps are
    trimmed where LangChain can (a step with one agent); a step with several agents
    keeps its output node, where the candidates join.
    """
    graph = Graph()
    first = graph.add_node(step.get_input_schema(config))
    middle = graph.add_node(step)
    last = graph.add_node(step.get_output_schema(config))
    graph.add_edge(first, middle)
    for agent in step.step_agents():
        data = agent.spec if isinstance(agent.spec, Runnable) else None
        node = graph.add_node(data)
        node = node.copy(name=agent.name)
        graph.nodes[node.id] = node
        graph.add_edge(middle, node)
        graph.add_edge(node, last)
    if not step.step_agents():
        graph.add_edge(middle, last)
    return graph
