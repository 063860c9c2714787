"""A model's own recommended sampling (edge_models/generation_config.py), read from its folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_models.catalog import DEFAULT_MODEL, KNOWN_MODELS
from edge_models.generation_config import SamplingDefaults, sampling_defaults


def folder_with(tmp_path: Path, search: dict[str, Any] | None, build: dict[str, Any] | None = None) -> Path:
    config: dict[str, Any] = {"model": {"type": "llama"}}
    if search is not None:
        config["search"] = search
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    if build is not None:
        (tmp_path / "build.json").write_text(json.dumps(build))
    return tmp_path


def read(folder: Path) -> SamplingDefaults:
    return sampling_defaults(folder, json.loads((folder / "genai_config.json").read_text()))


def test_a_sampling_search_section_is_the_default(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path, {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.1}
    )
    assert read(folder) == SamplingDefaults(0.6, 0.95, 20, 1.1, "genai_config.json")


def test_do_sample_false_is_greedy_whatever_the_temperature(tmp_path: Path) -> None:
    # Hugging Face's meaning: without do_sample, temperature and top_p are not used.
    folder = folder_with(tmp_path, {"do_sample": False, "temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.2})
    defaults = read(folder)
    assert (defaults.temperature, defaults.repetition_penalty) == (0.0, 1.2)
    assert defaults.describe() == "greedy, repetition_penalty 1.2 (from genai_config.json)"


def test_keys_left_out_take_hugging_face_defaults(tmp_path: Path) -> None:
    assert read(folder_with(tmp_path, {"do_sample": True})) == SamplingDefaults(1.0, 1.0, 50, 1.0, "genai_config.json")


@pytest.mark.parametrize("bad", [-1, "0.2", True, None])
def test_values_that_are_not_numbers_fall_back(tmp_path: Path, bad: object) -> None:
    defaults = read(folder_with(tmp_path, {"do_sample": True, "temperature": bad, "top_p": 0.9}))
    assert (defaults.temperature, defaults.top_p) == (1.0, 0.9)


def test_an_older_build_of_a_known_model_gets_the_catalogs_recommendation(tmp_path: Path) -> None:
    # Built before the recommendation was written into the folder: the builder's greedy defaults.
    folder = folder_with(tmp_path, {"do_sample": False, "temperature": 1.0}, build={"name": DEFAULT_MODEL})
    defaults = read(folder)
    recommended = KNOWN_MODELS[DEFAULT_MODEL].generation
    assert (defaults.temperature, defaults.top_p) == (recommended["temperature"], recommended["top_p"])
    assert "catalog" in defaults.source


def test_a_build_that_wrote_its_generation_config_is_taken_at_its_word(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, {"do_sample": False}, build={"name": DEFAULT_MODEL, "generation": {}})
    assert read(folder).temperature == 0.0


def test_a_folder_without_a_search_section_is_greedy(tmp_path: Path) -> None:
    assert read(folder_with(tmp_path, None)) == SamplingDefaults()


@pytest.mark.model
def test_the_built_edge_model_carries_its_model_cards_sampling(edge_model_dir: Path) -> None:
    # `hybrid-router edge build` writes SmolLM2's recommendation into the converted folder's generation
    # config; the builder copies it into genai_config.json, where any ONNX GenAI model keeps its own.
    search = json.loads((edge_model_dir / "genai_config.json").read_text())["search"]
    assert (search["do_sample"], search["temperature"], search["top_p"]) == (True, 0.2, 0.9)
    assert read(edge_model_dir) == SamplingDefaults(0.2, 0.9, 50, 1.0, "genai_config.json")
