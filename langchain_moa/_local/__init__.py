"""Private implementation of :mod:`langchain_moa.local` (one job per module):

* ``_catalog``: the bundled models (packages, size, sha256).
* ``_assembly``: chunk concatenation into the cache, locking, verification.
* ``_server``: ``LocalServer``, the llama.cpp server subprocess.
* ``_serve``: the subprocess entry point (llama_cpp.server plus stream usage).
* ``_clients``: a LangChain OpenAI chat model for any OpenAI-compatible URL.
* ``_registry``: one shared server per model per process.
"""
