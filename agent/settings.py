"""Loupe's settings, from environment variables (prefix ``LOUPE_``) or a ``.env`` file.

Limits for study loading are configurable here (``LOUPE_MAX_FRAME_PIXELS`` and friends) and
handed to the tools as a ``StudyLimits``; the tools never read the environment themselves.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tools.study import StudyLimits


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "local"


class LoupeSettings(BaseSettings):
    """All runtime configuration in one validated object."""

    model_config = SettingsConfigDict(env_prefix="LOUPE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path.home() / ".loupe", description="Where sessions and images live.")
    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default a SQLite file in data_dir.")
    user: str = Field(default_factory=lambda: _login_name(), description="Owner of the sessions created here.")
    host: str = Field(default="127.0.0.1", description="Address the app binds to (loopback unless set).")
    auth: Literal["none", "oidc", "proxy-header"] = Field(
        default="none",
        description="How app users are identified when it listens beyond this machine: Streamlit's OIDC "
                    "login (configured in .streamlit/secrets.toml) or a header set by a reverse proxy.")
    auth_header: str = Field(default="X-Forwarded-User", description="The proxy's user header (auth=proxy-header).")
    port: int = Field(default=8501, ge=1, le=65535)

    max_frame_pixels: int = Field(default=StudyLimits().max_frame_pixels, gt=0)
    max_total_pixels: int = Field(default=StudyLimits().max_total_pixels, gt=0)
    max_files: int = Field(default=StudyLimits().max_files, gt=0)
    max_archive_bytes: int = Field(default=StudyLimits().max_archive_bytes, gt=0)
    detector_model: Path | None = Field(
        default=None, description="An ONNX detector model (tools.detection.onnx_detector) that loupe eval scores "
                                  "instead of the classical detector.")
    performance_table: Path | None = Field(
        default=None, description="The offline detector's performance per kind of image as measured on this "
                                  "site's own images (bench/detector_performance.py MANIFEST --out FILE), "
                                  "instead of the table shipped with it.")

    dicomweb_url: str | None = Field(
        default=None, description="DICOMweb service root of the PACS (QIDO-RS, WADO-RS, STOW-RS), e.g. "
                                  "https://pacs.example.org/dicom-web; without it the PACS features are hidden.")
    dicomweb_user: str | None = Field(default=None, description="PACS user for HTTP basic authentication.")
    dicomweb_password: SecretStr | None = Field(default=None, description="PACS password (never logged or stored).")
    dicomweb_token: SecretStr | None = Field(
        default=None, description="PACS bearer token, instead of user and password (never logged or stored).")
    dicomweb_connect_timeout_s: float = Field(default=5.0, gt=0, description="Time to reach the PACS.")
    dicomweb_read_timeout_s: float = Field(default=60.0, gt=0, description="Time for one PACS answer.")
    dicomweb_retry_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries per PACS request on 5xx answers and connection errors (never 4xx).")
    dicomweb_retry_initial_s: float = Field(default=0.5, ge=0, description="First PACS backoff delay; doubles.")

    broker_url: str | None = Field(
        default=None, description="Celery broker for pre-read jobs (redis://host:6379/0); without it `loupe preread` "
                                  "runs the jobs in a local process pool.")
    preread_stable_s: float = Field(
        default=60.0, ge=0, description="A study counts as arrived on the PACS once its number of instances has not "
                                        "changed for this long (pre-read).")
    preread_orthanc_url: str | None = Field(
        default=None, description="Orthanc's REST root (http://host:8042), when the PACS is Orthanc: `loupe preread "
                                  "watch` also follows its /changes feed (StableStudy) for a faster start; the "
                                  "DICOMweb sweep still runs.")
    preread_sweep_days: int = Field(
        default=3, ge=0, le=365, description="`loupe preread watch` looks this many Study Dates back on each poll "
                                            "(a study sent late carries its acquisition date).")
    preread_stat_modalities: str = Field(
        default="", description="Comma-separated modalities whose studies are pre-read as STAT (e.g. CT,CR).")
    preread_stat_pattern: str | None = Field(
        default=None, description="A regular expression on the Study Description that makes a study STAT "
                                  "(e.g. '(?i)stroke|trauma|emergenc').")
    preread_stat_priorities: str = Field(
        default="STAT", description="Comma-separated values of the images' Requested Procedure Priority (0040,1003) "
                                    "that make a study STAT (STAT, HIGH, ROUTINE, MEDIUM, LOW).")
    preread_send: str = Field(
        default="", description="What a pre-read stores back in the study on the PACS: 'sr', 'pdf' or 'sr,pdf' "
                                "(marked as a preliminary automated result); empty stores nothing.")
    preread_chunk_slices: int = Field(
        default=64, ge=4, le=10_000, description="A pre-read series longer than this is searched in chunks of this "
                                                  "many slices, shared out to the pre-read workers.")
    preread_lease_s: float = Field(
        default=600.0, gt=0, description="A running pre-read job's lease: a job not renewed for this long (its "
                                         "worker was killed) is taken up again.")

    gemini_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("LOUPE_GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY"),
        description="Gemini Developer API key; without it Loupe runs the offline planner.",
    )
    use_vertexai: bool = Field(
        default=False, validation_alias=AliasChoices("LOUPE_USE_VERTEXAI", "GOOGLE_GENAI_USE_VERTEXAI"),
        description="Reach Gemini through Vertex AI (project and location) instead of the Developer API.",
    )
    google_cloud_project: str | None = Field(
        default=None, validation_alias=AliasChoices("LOUPE_GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_PROJECT"))
    google_cloud_location: str | None = Field(
        default=None, validation_alias=AliasChoices("LOUPE_GOOGLE_CLOUD_LOCATION", "GOOGLE_CLOUD_LOCATION"))

    backend: Literal["auto", "gemini", "openai", "offline"] = Field(
        default="auto", description="auto = Gemini when a key (or Vertex AI) is configured, else an OpenAI-compatible "
                                    "server when LOUPE_OPENAI_BASE_URL is set, else offline.")
    openai_base_url: str | None = Field(
        default=None, description="An OpenAI-compatible server (vLLM, Ollama, LM Studio, TGI), e.g. "
                                  "http://gpu-host:8000/v1.")
    openai_api_key: SecretStr | None = Field(default=None, description="Its API key; local servers often need none.")
    openai_model: str | None = Field(default=None, description="The served model's name, e.g. google/medgemma-4b-it.")
    openai_tools: bool = Field(
        default=True, description="The server does function calling; false (or a 400 naming tools) makes Loupe's "
                                  "planner choose the tools and the model write only the answer.")
    openai_box_format: Literal["yxyx-1000", "xyxy-1", "xyxy-px"] = Field(
        default="yxyx-1000", description="How the model writes boxes (tools.coordinates.BOX_FORMATS).")
    openai_structured_output: bool = Field(
        default=True, description="Ask for JSON-schema output (response_format); a server that refuses it gets "
                                  "plain requests and tolerant parsing.")
    model_site: Literal["cloud", "on-premises"] = Field(
        default="cloud", description="on-premises (only for the openai backend): pixels do not leave the site, so "
                                     "images are not held or blanked for possible burned-in text.")
    model: str = Field(default="gemini-2.5-flash", description="Gemini model id.")
    gemini_base_url: str | None = Field(
        default=None, description="Override the API endpoint (the SDK's GOOGLE_GEMINI_BASE_URL also works).")
    gemini_api_version: str = Field(default="v1beta", description="API version; explicit so tests and production agree.")
    thinking_budget: int = Field(default=1024, ge=-1, description="Thinking tokens per conversation call; 0 off, -1 dynamic.")
    stream: bool = Field(default=True, description="Stream Gemini's answers as they are written.")
    max_steps: int = Field(default=12, ge=1, le=50, description="Model calls per turn before the loop stops.")
    request_timeout_s: float = Field(default=60.0, gt=0, description="Read timeout of one model call.")
    retry_attempts: int = Field(default=4, ge=1, le=10, description="Tries per model call on transient errors.")
    retry_initial_s: float = Field(default=1.0, ge=0, description="First backoff delay; doubles with jitter.")
    retry_max_s: float = Field(default=20.0, ge=0, description="Longest single backoff delay.")
    model_image_max_side: int = Field(default=1024, ge=64, le=4096, description="Long side of images sent to the model.")
    detection_samples: int = Field(default=3, ge=1, le=5, description="Repeated detection calls per image.")
    detection_temperature: float = Field(default=0.5, ge=0, le=2)
    share_age_sex: bool = Field(default=False, description="Let the model see the patient's age and sex.")

    def study_limits(self) -> StudyLimits:
        return StudyLimits(
            max_frame_pixels=self.max_frame_pixels,
            max_total_pixels=self.max_total_pixels,
            max_files=self.max_files,
            max_archive_bytes=self.max_archive_bytes,
        )

    @property
    def listens_beyond_loopback(self) -> bool:
        return self.host not in ("127.0.0.1", "localhost", "::1")

    @property
    def gemini_configured(self) -> bool:
        return self.gemini_api_key is not None or (
            self.use_vertexai and bool(self.google_cloud_project) and bool(self.google_cloud_location))

    @property
    def backend_name(self) -> str:
        """The backend a new conversation uses: ``gemini``, ``openai`` or ``offline``."""
        if self.backend == "auto":
            return "gemini" if self.gemini_configured else "openai" if self.openai_base_url else "offline"
        return self.backend

    @property
    def on_premises_model(self) -> bool:
        """The configured model runs on the site's own servers (only the openai backend can)."""
        return self.model_site == "on-premises" and self.backend_name == "openai"

    @property
    def pacs_configured(self) -> bool:
        return bool(self.dicomweb_url)
