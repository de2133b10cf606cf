"""langchain-moa: Mixture-of-Agents pipelines and a multi-provider LLM router for LangChain."""
