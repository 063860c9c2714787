"""ChatTokenizer (tokenizers + jinja2) against onnxruntime-genai's tokenizer on the real model: the same ids, the
same streamed text. The batched edge target tokenizes with it instead of loading a second copy of the weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge_models.chat_tokenizer import ChatTokenizer
from edge_models.errors import GenerationError, ModelInvalid
from edge_models.runtime import EdgeModel, SamplingOptions

pytestmark = pytest.mark.model

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Colour of the sky?"}],
    [
        {"role": "user", "content": "Héllo wörld 👋 — 日本語, tabs\tand\nnewlines"},
        {"role": "assistant", "content": "Bonjour ! Ça va ? 🙂"},
        {"role": "user", "content": "<|im_end|> is not the end {{ not a template }} {% raw %}"},
    ],
    [{"role": "user", "content": ""}],
]
TEXTS = [
    "naïve café déjà vu",
    "東京都の天気は晴れです。",
    "emoji 👩‍👩‍👧‍👦 family, 🇫🇷 flag",
    "  leading spaces\r\n",
    "x" * 300,
]


@pytest.fixture(scope="module")
def genai(edge_model_dir: Path) -> EdgeModel:
    return EdgeModel.load(edge_model_dir, threads=1)


@pytest.fixture(scope="module")
def light(edge_model_dir: Path) -> EdgeModel:
    return EdgeModel.load(edge_model_dir, threads=1, generator=False)


def test_it_loads_without_onnxruntime_genais_model(light: EdgeModel) -> None:
    assert light.model is None and isinstance(light.tokenizer, ChatTokenizer)
    with pytest.raises(GenerationError, match="tokenize only"):
        light.generate(light.encode("hi"), SamplingOptions(2))


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_the_chat_template_renders_and_encodes_the_same(
    genai: EdgeModel, light: EdgeModel, messages: list[dict[str, str]]
) -> None:
    assert light.render_chat(messages) == genai.render_chat(messages)
    assert light.encode_chat(messages).tolist() == genai.encode_chat(messages).tolist()


@pytest.mark.parametrize("text", TEXTS)
def test_text_streams_back_the_same_piece_by_piece(genai: EdgeModel, light: EdgeModel, text: str) -> None:
    ids = [int(i) for i in genai.encode(text)]
    assert light.encode(text).tolist() == ids
    # Special tokens in the stream are skipped by both. Pieces may split differently (ours holds a space
    # back until the emoji after it is whole), the text they add up to may not.
    ids = [*ids, 2, 0, *ids]
    theirs, ours = genai.tokenizer.create_stream(), light.tokenizer.create_stream()
    pieces = [ours.decode(i) for i in ids]
    assert "".join(pieces) == "".join(theirs.decode(i) for i in ids) == text + text
    assert all("\ufffd" not in piece for piece in pieces)


def test_a_generated_answer_is_the_same(genai: EdgeModel, light: EdgeModel) -> None:
    prompt = genai.encode_chat([{"role": "user", "content": "Write two sentences about Tokyo, in Japanese."}])
    generation = genai.generate(prompt, SamplingOptions(48))
    text = "".join(generation)
    assert text  # the model's own answer, decoded by both from the same ids
    ids = [int(i) for i in genai.encode(text)]
    stream = light.tokenizer.create_stream()
    assert "".join(stream.decode(i) for i in ids) == text


def test_a_folder_without_a_chat_template_is_refused_clearly(tmp_path: Path, edge_model_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(edge_model_dir / name, tmp_path / name)
    config: dict[str, Any] = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelInvalid, match="no chat template"):
        ChatTokenizer.load(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ModelInvalid, match="does not compile"):
        ChatTokenizer.load(tmp_path)
