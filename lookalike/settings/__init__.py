"""One typed settings object for every face of Lookalike.

Sources, strongest first: explicit overrides (``load_settings(overrides=...)``, the Serve
app's ``args``), environment variables ``LOOKALIKE_<SECTION>__<FIELD>`` (e.g.
``LOOKALIKE_MILVUS__URI``), the YAML file (``$LOOKALIKE_CONFIG`` or ``config/lookalike.yaml``),
then the defaults (each section's, in ``sections.py``; importable from here as the object's
parts). Relative paths are resolved against the working directory when the settings are
loaded, so the object can be shipped to other processes unchanged.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource

from lookalike.settings.sections import (
    ApiSettings,
    DuplicateSettings,
    IMAGE_EXTENSIONS,
    ImageLimits,
    IndexSettings,
    IngestSettings,
    MilvusSettings,
    ModelSettings,
    RegionSettings,
    S3Settings,
    ServeSettings,
    StoreSettings,
    is_lite_uri,
)

__all__ = ["Settings", "load_settings", "defaults", "config_path", "without_secrets", "CONFIG_ENV",
           "DEFAULT_CONFIG", "ENV_PREFIX", "ApiSettings", "DuplicateSettings", "IMAGE_EXTENSIONS", "ImageLimits",
           "IndexSettings", "IngestSettings", "MilvusSettings", "ModelSettings", "RegionSettings", "S3Settings",
           "ServeSettings", "StoreSettings", "is_lite_uri"]

ENV_PREFIX = "LOOKALIKE_"
CONFIG_ENV = "LOOKALIKE_CONFIG"
DEFAULT_CONFIG = Path("config") / "lookalike.yaml"
_REPO_CONFIG = Path(__file__).resolve().parents[2] / DEFAULT_CONFIG


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    images: ImageLimits = Field(default_factory=ImageLimits)
    api: ApiSettings = Field(default_factory=ApiSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    duplicates: DuplicateSettings = Field(default_factory=DuplicateSettings)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        path = _config_file.get()
        sources = [init_settings, env_settings]
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def with_overrides(self, **sections: Any) -> "Settings":
        """A copy with some fields of some sections replaced, validated again
        (``milvus={"uri": ...}``: the other fields of ``milvus`` stay; a field's value, a dict
        included, is replaced whole)."""
        data = self.model_dump()
        for name, fields in sections.items():
            data[name] = {**data[name], **fields}
        return Settings.model_validate(data)


_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config_file", default=None)


def config_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """The YAML file to read: explicit, $LOOKALIKE_CONFIG, ./config/lookalike.yaml, the repo's."""
    if explicit:
        return _existing(Path(explicit))
    if os.environ.get(CONFIG_ENV):
        return _existing(Path(os.environ[CONFIG_ENV]))
    for candidate in (DEFAULT_CONFIG, _REPO_CONFIG):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return path.resolve()


def without_secrets(model: BaseModel) -> dict:
    """``model`` as plain data (JSON types), its SecretStr fields left out."""
    data = model.model_dump(mode="json")
    for name, value in model:
        if isinstance(value, SecretStr):
            del data[name]
        elif isinstance(value, BaseModel):
            data[name] = without_secrets(value)
    return data


class _Defaults(Settings):
    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **others):
        return (init_settings,)


def defaults() -> Settings:
    """The code's defaults alone: no file, no environment variable."""
    return _Defaults()


def load_settings(config: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """The settings: ``overrides`` (nested dicts), then LOOKALIKE_* variables, then the YAML file,
    then the defaults, merged field by field by pydantic-settings."""
    token = _config_file.set(config_path(config))
    try:
        return Settings(**(overrides or {}))
    finally:
        _config_file.reset(token)
