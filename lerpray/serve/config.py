"""Typed arguments of the serving app: the `args:` block of a Serve config YAML (see cluster/serve.yaml).

Autoscaling and backpressure knobs (replica counts, target_ongoing_requests, max_ongoing_requests,
max_queued_requests) are deployment options and live in the YAML's `deployments:` block, not here.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from lerpray.configs import BaseModelOverride, BoundsArgs, StrictModel
from lerpray.kv_config import KVCacheArgs
from lerpray.mixing import MIX_KEYS, ExtrapolationBounds

__all__ = ["MultiplexArgs", "ServeArgs"]

PRESET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")  # no ":", which starts an inline mix


class MultiplexArgs(StrictModel):
    """Serving the sets over a pool of replicas with Ray Serve's model multiplexing (lerpray.serve.multiplexed)."""

    max_sets_per_replica: int = Field(
        ge=1, description="anchor sets one replica holds (those on one base model share one engine: one copy of "
        "the base weights); the least recently used one is unloaded to load another (Serve's "
        "max_num_models_per_replica)",
    )


class ServeArgs(KVCacheArgs):
    """Everything a replica needs to load its engine and police requests (the KV-cache budget and context length:
    lerpray.kv_config.KVCacheArgs)."""

    model_config = ConfigDict(extra="forbid")

    anchors: str = Field(description="anchor-set URI: a local folder or s3://bucket/prefix; URI@VERSION or "
                         "URI@ALIAS (e.g. @latest, @prod) for one version of a versioned set")
    base_model: BaseModelOverride = None
    model_name: str = Field("lerpray", min_length=1, description="the model id clients send and /v1/models lists")
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_batch_size: int = Field(32, ge=1, description="requests decoded together in one engine step")
    max_queue: int = Field(64, ge=0, description="requests waiting for a batch slot before new ones get 503")
    max_tokens_cap: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(128, ge=1, description="max_tokens when a request gives none")
    extrapolation: BoundsArgs | None = Field(
        default_factory=BoundsArgs, description='bounds for "extrapolate": true; null disables extrapolation'
    )
    presets: dict[str, dict[str, JsonValue]] = Field(
        default_factory=dict, description='model id -> its mix in the `interpolation` form, e.g. {"lerpray-upbeat": '
        '{"alpha": {"sentiment": 0.9}}}; checked against the anchor set when it loads (lerpray.steering)',
    )
    sets: dict[str, str] = Field(
        default_factory=dict, description="more model ids, each serving its own anchor set (URI, URI@VERSION or "
        "URI@ALIAS), e.g. another base model or attribute family; the request's `model` selects the set. Sets on "
        "the main set's base model share its engine (one base copy, rows of every set in one batch)",
    )
    multiplex: MultiplexArgs | None = Field(
        None, description="route each set (the main one and those of `sets`) to the replicas that hold it with Ray "
        "Serve's model multiplexing: a router deployment (LerpRouter) in front of a pool of set replicas (LerpSets), "
        "each loading sets on first use; unset = every replica loads every set",
    )
    anchor_capacity: int | None = Field(
        None, ge=1, description="anchors the engine shared by the sets on the main set's base model (two or more) "
        "holds at once: sets beyond it stay in host memory and are paged in on first use, the least recently used set "
        "not in use paged out (lerpray.model.anchor_pool); a set with more anchors gets 503; unset = all resident. "
        "With multiplex: the anchors of each replica's engine per base model (unset = room for "
        "max_sets_per_replica of the largest set on that base)",
    )
    api_key_env: str | None = Field(None, description="env var holding the API key; unset = no auth")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 when the queue is full")
    store_retry_s: float = Field(
        120.0, ge=0, description="how long a starting replica retries a failing anchor store (backoff 1 s doubling "
        "to 30 s) before it fails and Serve starts another",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per replica; unset = torch's")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica")

    @model_validator(mode="after")
    def _default_within_cap(self) -> ServeArgs:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must not exceed max_tokens_cap "
                f"({self.max_tokens_cap}); lower it or raise the cap"
            )
        return self

    @model_validator(mode="after")
    def _kv_fits_device(self) -> ServeArgs:
        self.check_kv_device(self.device.startswith("cuda"), self.device, ("default_max_tokens", self.default_max_tokens))
        return self

    @field_validator("presets")
    @classmethod
    def _preset_keys(cls, presets: dict[str, dict[str, JsonValue]]) -> dict[str, dict[str, JsonValue]]:
        """Typos fail the config; names and ranges need the anchor set, so they are checked when it loads."""
        for name, mix in presets.items():
            if unknown := [key for key in mix if key not in MIX_KEYS]:
                raise ValueError(f"presets.{name}.{unknown[0]}: unknown key; allowed keys: {', '.join(MIX_KEYS)}")
        return presets

    @model_validator(mode="after")
    def _preset_ids(self) -> ServeArgs:
        for name in self.presets:
            if name == self.model_name or not PRESET_ID.match(name):
                raise ValueError(
                    f"presets: {name[:64]!r} cannot be a preset id; use letters, digits and . _ / - (no ':', which "
                    f"starts an inline mix), at most 128 characters, and not the served id {self.model_name!r}"
                )
        return self

    @model_validator(mode="after")
    def _set_ids(self) -> ServeArgs:
        for name in self.sets:
            if name == self.model_name or name in self.presets or not PRESET_ID.match(name):
                raise ValueError(
                    f"sets: {name[:64]!r} cannot be a model id; use letters, digits and . _ / - (no ':'), at most "
                    f"128 characters, and not the served id {self.model_name!r} or a preset's"
                )
        return self

    def bounds(self) -> ExtrapolationBounds | None:
        return None if self.extrapolation is None else self.extrapolation.to_bounds()

    def ray_actor_options(self) -> dict[str, float]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
