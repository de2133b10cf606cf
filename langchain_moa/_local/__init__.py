"""Private implementation of :mod:`langchain_moa.local` (one job per module):

* ``_catalog``: the bundled models (packages, size, sha256).
* ``_assembly``: chunk concatenation into the cache, locking, verification.
* ``_build``: builds llama.cpp's ``llama-server`` from source into the cache, once.
* ``_server``: ``LocalServer``, the ``llama-server`` subprocess.
* ``_clients``: a LangChain OpenAI chat model for any OpenAI-compatible URL.
* ``_registry``: one shared server per model per process.
"""
