"""The base models' licenses as the Hub names them; a LoRA is published under its base model's terms."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class License:
    hub_id: str  # the Hub's `license:` value
    name: str = ""  # `license_name:` when hub_id is "other"
    link: str = ""  # `license_link:` when hub_id is "other"

    @property
    def spec_value(self) -> str:
        """What modelspec.license holds: the named license, or its link."""
        return self.name or self.hub_id


# By (family, variant); (family, "") is the family's default. A new family adds its lines.
BASE_LICENSES: dict[tuple[str, str], License] = {
    ("sd1", ""): License("creativeml-openrail-m"),
    ("sd2", ""): License("openrail++"),
    ("sdxl", ""): License("openrail++"),
    ("sd3", ""): License("other", "stabilityai-ai-community",
                         "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/blob/main/LICENSE.md"),
    ("flux", ""): License("other", "flux-1-dev-non-commercial-license",
                          "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"),
    ("flux", "schnell"): License("apache-2.0"),
}


def license_for(family: str, variant: str | None, chosen: str = "") -> License | None:
    """``publish.license`` when set, else the base model's (None when loratui does not know it)."""
    if chosen.strip():
        return License(chosen.strip())
    return BASE_LICENSES.get((family, variant or "")) or BASE_LICENSES.get((family, ""))
