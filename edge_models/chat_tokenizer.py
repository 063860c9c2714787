"""The edge model's tokenizer and chat template without onnxruntime-genai's model: 250 MB less.

onnxruntime-genai tokenizes only through an ``og.Model``, which loads the
weights into a session of its own. The continuous batcher
(:mod:`edge_models.batching`) runs the weights in its own session, so with
it the first copy served only to tokenize. This does the same work with the
libraries Hugging Face uses: ``tokenizers`` on the folder's
``tokenizer.json`` and jinja2 on its chat template (``chat_template.jinja``,
else ``tokenizer_config.json``'s ``chat_template``), rendered the way
transformers renders it. It offers the three calls the edge code makes of
onnxruntime-genai's tokenizer (``apply_chat_template``, ``encode``,
``create_stream``), and ``tests/edge/test_chat_tokenizer.py`` checks that the
ids and streamed text are the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_models.errors import ModelInvalid

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["ChatTokenizer"]


class ChatTokenizer:
    """``tokenizer.json`` and the chat template of an ONNX GenAI model folder."""

    def __init__(self, tokenizer: Any, template: Callable[..., str], special: dict[str, str]) -> None:
        self._tokenizer = tokenizer
        self._template = template
        self._special = special

    @classmethod
    def load(cls, folder: Path) -> ChatTokenizer:
        """:class:`ModelInvalid` when the folder lacks a ``tokenizer.json`` or a chat template jinja2 can compile."""
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # a core dependency; a broken install says so
            raise ModelInvalid("the tokenizers package is missing: pip install tokenizers") from exc
        if not (folder / "tokenizer.json").is_file():
            raise ModelInvalid(f"{folder} has no tokenizer.json")
        config: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text())
        source = (
            (folder / "chat_template.jinja").read_text()
            if (folder / "chat_template.jinja").is_file()
            else config.get("chat_template")
        )
        if not isinstance(source, str):
            raise ModelInvalid(f"{folder} has no chat template")
        special = {key: value for key in ("bos_token", "eos_token", "pad_token", "unk_token")
                   if isinstance(value := config.get(key), str)}  # fmt: skip
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), _compile(source), special)

    def apply_chat_template(self, messages: str, *, add_generation_prompt: bool = True) -> str:
        """``messages`` as JSON, like onnxruntime-genai's ``Tokenizer.apply_chat_template``."""
        return self._template(
            messages=json.loads(messages), add_generation_prompt=add_generation_prompt, **self._special
        )

    def encode(self, text: str) -> npt.NDArray[np.int32]:
        import numpy as np

        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def create_stream(self) -> _Stream:
        return _Stream(self._tokenizer)


class _Stream:
    """Text piece by piece as ids come; a character split across ids waits for its last byte."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def decode(self, token: int) -> str:
        return self._stream.step(self._tokenizer, int(token)) or ""


def _compile(source: str) -> Callable[..., str]:
    """The template as transformers compiles it: sandboxed, trimmed blocks, ``raise_exception``, ``strftime_now``."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        template = env.from_string(source)
    except TemplateError as exc:
        raise ModelInvalid(f"the chat template does not compile: {exc}") from exc
    return template.render
