"""Loupe's settings, from environment variables (prefix ``LOUPE_``) or a ``.env`` file.

Limits for study loading are configurable here (``LOUPE_MAX_FRAME_PIXELS`` and friends) and
handed to the tools as a ``StudyLimits``; the tools never read the environment themselves.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tools.study import StudyLimits


class LoupeSettings(BaseSettings):
    """All runtime configuration in one validated object."""

    model_config = SettingsConfigDict(env_prefix="LOUPE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path.home() / ".loupe", description="Where sessions and images live.")
    host: str = Field(default="127.0.0.1", description="Address the app binds to.")
    port: int = Field(default=8501, ge=1, le=65535)

    max_frame_pixels: int = Field(default=StudyLimits().max_frame_pixels, gt=0)
    max_total_pixels: int = Field(default=StudyLimits().max_total_pixels, gt=0)
    max_files: int = Field(default=StudyLimits().max_files, gt=0)
    max_archive_bytes: int = Field(default=StudyLimits().max_archive_bytes, gt=0)

    gemini_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LOUPE_GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY"),
        description="Gemini Developer API key; without it Loupe runs the offline planner.",
    )

    def study_limits(self) -> StudyLimits:
        return StudyLimits(
            max_frame_pixels=self.max_frame_pixels,
            max_total_pixels=self.max_total_pixels,
            max_files=self.max_files,
            max_archive_bytes=self.max_archive_bytes,
        )

    @property
    def backend_name(self) -> str:
        return "gemini" if self.gemini_api_key else "offline"
