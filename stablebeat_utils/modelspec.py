"""The base model's facts, read from its ``model_config.json``, plus a small registry of what configs do not say.

Used by notebooks 05_train, 05b_focus and 06_generate (and the storage and memory plans); no notebook of
its own. Every module that needs a fact of the base model (its sample rate, latent rate, window, which
numbers it is conditioned on, its sampler family, its hub id, parameter counts, licence) reads it here:
:func:`from_config` for a config in hand, :data:`SAO` for Stable Audio Open 1.0 (the course's model).

A second architecture is a config file in ``data/`` and one :class:`Known` entry in :data:`REGISTRY`
(``make fullsize`` takes stable-audio-open-small's through 05 → 06 that way, random weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).parent / "data"

# samplers of stable-audio-tools 0.0.20 per diffusion objective (inference/sampling.py): k-diffusion's
# and v-ddim for a "v" model (SAO 1.0); the flow samplers for a rectified-flow one (SAO small: "rf_denoiser")
V_SAMPLERS = (
    "dpmpp-3m-sde",
    "dpmpp-2m-sde",
    "dpmpp-2m",
    "k-heun",
    "k-lms",
    "k-dpmpp-2s-ancestral",
    "k-dpm-2",
    "k-dpm-fast",
    "k-dpm-adaptive",
    "v-ddim",
)
FLOW_SAMPLERS = ("pingpong", "euler", "rk4", "dpmpp")
SAMPLERS = {"v": V_SAMPLERS, "rectified_flow": FLOW_SAMPLERS, "rf_denoiser": FLOW_SAMPLERS}
ALL_SAMPLERS = V_SAMPLERS + FLOW_SAMPLERS  # before a model's config is read


@dataclass(frozen=True)
class Known:
    """What a ``model_config.json`` does not say about a published base model."""

    name: str
    label: str  # how the lessons and the model card name it
    hub_id: str
    config_file: str  # its config, bundled in data/ (the hub's, T5 from the hub's "t5-base")
    licence_name: str
    licence_id: str  # the hub's license_name for a derivative work
    notice: str | None = None  # the sentence the licence wants in a "Notice" file of a derivative work
    licence_file: str | None = None  # the licence's file in the base model's hub repo (a copy must ship)
    trained_params: int | None = None  # DiT + number conditioners (None: counted from the config)
    vae_params: int | None = None
    lora_params_per_rank: int | None = None  # rank-1 adapters on the DiT's Linear and Conv1d layers

    @property
    def config_path(self) -> Path:
        return DATA / self.config_file


# Stability AI Community License (July 5, 2024), IV a (ii): quoted in docs/licence.md
COMMUNITY_NOTICE = (
    "This Stability AI Model is licensed under the Stability AI Community License, "
    "Copyright \u00a9 Stability AI Ltd. All Rights Reserved"
)

REGISTRY = {
    k.name: k
    for k in (
        Known(
            name="stable-audio-open-1.0",
            label="Stable Audio Open 1.0",
            hub_id="stabilityai/stable-audio-open-1.0",
            config_file="sao-1.0-model_config.json",
            licence_name="Stability AI Community License",
            # SAO 1.0's card front matter: license_name stable-audio-community (card copy in
            # github.com/dlwowlb/non-monotonous-music README.md; the release-time card said
            # stable-audio-nc-community: https://code.bitahub.com/stabilityai/stable-audio-open-1.0/src/branch/main/README.md)
            licence_id="stable-audio-community",
            notice=COMMUNITY_NOTICE,
            licence_file="LICENSE.md",
            trained_params=1_057_224_960,  # DiT 1,056,828,416 + 2 number conditioners x 198,272
            vae_params=156_112_514,
            lora_params_per_rank=957_568,  # rank-1 adapters on the DiT's 176 Linear + 2 Conv1d layers
        ),
        Known(
            name="stable-audio-open-small",
            label="Stable Audio Open Small",
            hub_id="stabilityai/stable-audio-open-small",
            config_file="sao-small-model_config.json",  # written from the public description (see its notes)
            licence_name="Stability AI Community License",
            licence_id="stabilityai-ai-community",  # not checked against its card
            notice=COMMUNITY_NOTICE,
            licence_file="LICENSE.md",
        ),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """A base model's facts, as its ``model_config.json`` states them (``known``: the registry's rest)."""

    sample_rate: int
    audio_channels: int
    sample_size: int  # the window, in samples
    latent_channels: int
    downsampling_ratio: int  # samples per latent frame
    conditioning_ids: tuple[str, ...]  # e.g. ("prompt", "seconds_start", "seconds_total")
    diffusion_objective: str  # "v" (SAO 1.0) or a flow objective
    known: Known | None = None

    @property
    def window_seconds(self) -> float:
        return self.sample_size / self.sample_rate

    @property
    def latent_rate(self) -> float:
        """Latent frames per second."""
        return self.sample_rate / self.downsampling_ratio

    @property
    def window_frames(self) -> int:
        return self.sample_size // self.downsampling_ratio

    @property
    def samplers(self) -> tuple[str, ...]:
        return SAMPLERS.get(self.diffusion_objective, V_SAMPLERS)

    def conditions(self, cond_id: str) -> bool:
        """Whether the model is conditioned on ``cond_id`` (SAO small has no ``seconds_start``)."""
        return cond_id in self.conditioning_ids


def _architecture(cfg: dict) -> str:
    """The parts of a config that make the network (not T5's location, not the training section)."""
    m = cfg.get("model", {})
    conds = [{k: v for k, v in c.items() if k != "config"} for c in m.get("conditioning", {}).get("configs", [])]
    return json.dumps([cfg.get("sample_size"), m.get("diffusion"), conds], sort_keys=True)


@lru_cache(maxsize=None)
def _known_architectures() -> dict[str, Known]:
    return {_architecture(json.loads(k.config_path.read_text(encoding="utf-8"))): k for k in REGISTRY.values()}


def from_config(cfg: dict) -> ModelSpec:
    """The facts of the model a ``model_config.json`` dict describes (a registry entry when it is a known one)."""
    m = cfg.get("model") or {}  # a partial config (sample_size, sample_rate) has the rest's defaults
    pt = (m.get("pretransform") or {}).get("config") or {}
    diffusion = m.get("diffusion") or {}
    return ModelSpec(
        sample_rate=int(cfg["sample_rate"]),
        audio_channels=int(cfg.get("audio_channels", 2)),
        sample_size=int(cfg["sample_size"]),
        latent_channels=int(pt.get("latent_dim", m.get("io_channels", 0))),
        downsampling_ratio=int(pt.get("downsampling_ratio", 1)),
        conditioning_ids=tuple(c["id"] for c in (m.get("conditioning") or {}).get("configs", [])),
        diffusion_objective=str(diffusion.get("diffusion_objective", "v")),
        known=_known_architectures().get(_architecture(cfg)),
    )


def by_hub_id(hub_id: str) -> Known | None:
    """The registry's entry of a hub id ("stabilityai/stable-audio-open-1.0"), else None."""
    return next((k for k in REGISTRY.values() if k.hub_id == hub_id), None)


def bundled_config(name: str) -> dict:
    """A registry model's ``model_config.json`` (bundled in data/)."""
    return json.loads(REGISTRY[name].config_path.read_text(encoding="utf-8"))


def of(name: str) -> ModelSpec:
    """A registry model's spec, read from its bundled config."""
    return from_config(bundled_config(name))


SAO_NAME = "stable-audio-open-1.0"
SAO = of(SAO_NAME)  # the course's base model
