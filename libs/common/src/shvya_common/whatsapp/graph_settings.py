"""Where Meta's Graph API is and which version is spoken: dispatch sends there, and ingest asks
it, with a company's own token, whether the company owns the number it registers
(`shvya_common.whatsapp.ownership`)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from shvya_common.settings import CommonSettings


class GraphSettings(CommonSettings):
    whatsapp_cloud_base_url: str = Field(
        "https://graph.facebook.com", pattern=r"^https?://", description="Graph API base URL."
    )
    whatsapp_cloud_api_version: str = Field(
        "v23.0", description="Graph API version, e.g. v23.0 (a bare 23.0 is accepted)."
    )

    @field_validator("whatsapp_cloud_api_version")
    @classmethod
    def _normalise_graph_version(cls, value: str) -> str:
        version = value.strip()
        version = version if version.startswith("v") else f"v{version}"
        if not re.fullmatch(r"v\d+\.\d+", version):
            raise ValueError(f"expected a Graph API version like v23.0, got {value!r}")
        return version
