"""Loading tokenizers and models named by a config entry (local folder or hub id)."""

from __future__ import annotations

from typing import Any

from fusepipe.errors import ConfigError


def load_tokenizer(spec: dict[str, Any]):
    """The model's tokenizer with its chat template (or the config's override). Fails with the model's name."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec["path"], trust_remote_code=spec.get("trust_remote_code", False))
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"model {spec['name']!r}: cannot load a tokenizer from {spec['path']!r} ({first})") from None
    if spec.get("chat_template"):
        tok.chat_template = spec["chat_template"]
    if not tok.chat_template:
        raise ConfigError(
            f"model {spec['name']!r}: {spec['path']!r} has no chat template; set `chat_template:` for it in the config"
        )
    return tok
