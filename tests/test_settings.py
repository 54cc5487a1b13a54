import os
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from lookalike.settings import defaults, load_settings

from harness.fixtures import CONFIG


def test_yaml_defaults_load_and_paths_resolve(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(CONFIG)
    assert settings.model.name == "efficientnet-lite0"
    assert settings.milvus.index.type == "HNSW"
    assert settings.milvus.index.build_params == {"M": 16, "efConstruction": 200}
    assert settings.milvus.index.search_params == {"ef": 64}
    # Relative paths become absolute against the working directory at load time.
    assert settings.milvus.uri == str(tmp_path / "data" / "lookalike.db")
    assert settings.milvus.is_lite
    assert settings.store.local_dir == str(tmp_path / "data" / "images")


def test_env_overrides_nested_fields_and_yaml(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_MILVUS__URI", "http://milvus.example:19530")
    monkeypatch.setenv("LOOKALIKE_MILVUS__INDEX__TYPE", "IVF_FLAT")
    monkeypatch.setenv("LOOKALIKE_MILVUS__INDEX__BUILD__IVF_FLAT", '{"nlist": 64}')
    monkeypatch.setenv("LOOKALIKE_STORE__S3__SECRET_KEY", "s3cr3t")
    monkeypatch.setenv("LOOKALIKE_API__TOP_K_MAX", "7")
    monkeypatch.setenv("LOOKALIKE_API__TOP_K_DEFAULT", "5")
    settings = load_settings(CONFIG)
    assert settings.milvus.uri == "http://milvus.example:19530" and not settings.milvus.is_lite
    assert settings.milvus.index.type == "IVF_FLAT"
    # Switching the type switches the parameters: no HNSW leftovers reach an IVF index.
    assert settings.milvus.index.build_params == {"nlist": 64}
    assert settings.milvus.index.search_params == {"nprobe": 16}
    assert settings.milvus.collection == "images"  # untouched YAML value survives the merge
    assert settings.store.s3.secret_key.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(settings)
    assert settings.api.top_k_max == 7


def test_config_file_from_env_and_overrides(monkeypatch, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("milvus:\n  collection: other\nmodel:\n  name: resnet50\n")
    monkeypatch.setenv("LOOKALIKE_CONFIG", str(other))
    settings = load_settings(overrides={"api": {"top_k_default": 3}})
    assert settings.milvus.collection == "other"
    assert settings.model.name == "resnet50"
    assert settings.api.top_k_default == 3


@pytest.mark.parametrize("yaml_text", [
    "milvus:\n  index:\n    type: DISKANN\n",      # not a supported index type
    "milvus:\n  colection: typo\n",               # misspelled field
    "api:\n  top_k_default: 50\n  top_k_max: 10\n",  # inconsistent bounds
    "model:\n  batch_size: 0\n",
])
def test_invalid_settings_are_refused(tmp_path, yaml_text):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValidationError):
        load_settings(path)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.yaml")


def test_overrides_env_and_file_merge_field_by_field(monkeypatch, tmp_path):
    """pydantic-settings merges the sources: an override of one field keeps the others of its section."""
    other = tmp_path / "other.yaml"
    other.write_text("milvus:\n  collection: from_file\n  timeout_s: 7\n")
    monkeypatch.setenv("LOOKALIKE_MILVUS__COLLECTION", "from_env")
    settings = load_settings(other, overrides={"milvus": {"uri": str(tmp_path / "o.db")}})
    assert (settings.milvus.uri, settings.milvus.collection, settings.milvus.timeout_s) == (
        str(tmp_path / "o.db"), "from_env", 7)
    copy = settings.with_overrides(milvus={"timeout_s": 9})
    assert (copy.milvus.collection, copy.milvus.timeout_s, settings.milvus.timeout_s) == ("from_env", 9, 7)


def _leaves(data: dict, path: tuple = ()):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, path + (key,))
        else:
            yield path + (key,), value


def _at(data, path):
    for key in path:
        data = data[key]
    return data


def test_the_config_file_restates_no_default():
    """One definition per default: config/lookalike.yaml holds only what a deployment changes."""
    given = yaml.safe_load(CONFIG.read_text()) or {}
    loaded, default = load_settings(CONFIG).model_dump(mode="json"), defaults().model_dump(mode="json")
    restated = [".".join(path) for path, _ in _leaves(given) if _at(loaded, path) == _at(default, path)]
    assert restated == [], f"{CONFIG.name} restates defaults of lookalike/settings/sections.py: {restated}"


def test_lookalike_config_prints_the_settings_in_effect_as_a_config_file(tmp_path):
    env = {**os.environ, "LOOKALIKE_API__TOP_K_MAX": "70", "LOOKALIKE_API__API_KEY": "s3cret-key"}
    shown = subprocess.run([sys.executable, "-m", "lookalike.cli", "--config", str(CONFIG), "config"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "s3cret-key" not in shown.stdout and yaml.safe_load(shown.stdout)["api"]["top_k_max"] == 70
    (tmp_path / "shown.yaml").write_text(shown.stdout)
    again = load_settings(tmp_path / "shown.yaml").model_dump(mode="json")
    expected = load_settings(CONFIG, overrides={"api": {"top_k_max": 70}}).model_dump(mode="json")
    assert again == expected  # secrets left out: the environment keeps them
    bad = subprocess.run([sys.executable, "-m", "lookalike.cli", "config"], capture_output=True, text=True,
                         env={**os.environ, "LOOKALIKE_API__TOP_K_MAX": "7"}, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "lookalike: invalid settings: api: api.top_k_default must not exceed api.top_k_max")
