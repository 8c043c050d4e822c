"""The model description that is saved as JSON beside the weights (stardist-style).

A :class:`ModelConfig` fully determines the network architecture: given the same config, the
same module is rebuilt and the weights load into it. Defaults are DeepSCEM's published default:
a 2D residual U-Net of depth 5 (four 2× poolings), 32 filters doubled per level, two 3×3
convolutions per block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ...errors import ConfigError

__all__ = ["ModelConfig", "Norm", "OutputMode"]

Norm = Literal["batch", "group", "instance", "none"]
OutputMode = Literal["sigmoid", "softmax"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a segmentation network.

    ``output`` decides how classes relate: ``sigmoid`` gives one independent probability per
    class (classes may overlap); ``softmax`` gives a distribution over background + classes
    (classes are mutually exclusive) and an argmax label map.
    """

    classes: tuple[str, ...] = ("foreground",)
    dims: int = 2
    depth: int = 5
    filters: int = 32
    blocks_per_level: int = 1
    convs_per_block: int = 2
    residual: bool = True
    norm: Norm = "batch"
    groups: int = 8
    dropout: float = 0.0
    kernel_size: int = 3
    output: OutputMode = "sigmoid"
    in_channels: int = 1
    #: 3D only: how many of the (depth - 1) poolings also halve Z. Anisotropic ssTEM/SBF-SEM
    #: stacks (thick sections) usually want fewer Z poolings than XY poolings.
    z_poolings: int | None = None
    #: 3D only, 2.5D networks: each output slice sees this many neighbouring slices on each side
    #: as extra input channels of a 2D U-Net (:class:`~.unet.SliceContextUNet`); no Z pooling.
    #: Meant for thick ssTEM/SBF-SEM sections, too anisotropic for 3D convolutions; on vnc_sstem
    #: it did not beat 2D within a CPU budget (README, *Training that plans itself*).
    slice_context: int = 0
    #: Name of a registered architecture (see :mod:`fiji_emseg.engine.architectures`).
    architecture: str = "unet"
    #: Free-form parameters for custom architectures; must be JSON-serialisable.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if not self.classes:
            raise ConfigError("a model needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"class names must be unique, got {list(self.classes)}")
        if self.dims not in (2, 3):
            raise ConfigError(f"dims must be 2 or 3, got {self.dims}")
        if not 1 <= self.depth <= 8:
            raise ConfigError(f"depth must be between 1 and 8 levels, got {self.depth}")
        if self.filters < 1:
            raise ConfigError(f"filters must be positive, got {self.filters}")
        if self.blocks_per_level < 1 or self.convs_per_block < 1:
            raise ConfigError("blocks_per_level and convs_per_block must be at least 1")
        if self.norm not in ("batch", "group", "instance", "none"):
            raise ConfigError(f"unknown normalisation {self.norm!r}; use batch, group, instance or none")
        if self.norm == "group" and self.filters % self.groups:
            raise ConfigError(f"group norm needs filters ({self.filters}) divisible by groups ({self.groups})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.output not in ("sigmoid", "softmax"):
            raise ConfigError(f"output must be sigmoid or softmax, got {self.output!r}")
        if self.z_poolings is not None and not 0 <= self.z_poolings <= self.depth - 1:
            raise ConfigError(f"z_poolings must be between 0 and depth-1 ({self.depth - 1}), got {self.z_poolings}")

        if not 0 <= self.slice_context <= 3:
            raise ConfigError(f"slice_context must be between 0 and 3 slices, got {self.slice_context}")
        if self.slice_context and self.dims != 3:
            raise ConfigError("slice_context (a 2.5D network) needs dims=3: it reads a stack of slices; "
                              "set dims=3 or slice_context=0")
        if self.slice_context and self.z_poolings:
            raise ConfigError("a 2.5D network (slice_context > 0) does not pool in Z; set z_poolings=0")
        if self.slice_context and self.architecture != "unet":
            raise ConfigError("slice_context is a setting of the built-in 'unet' architecture")

    # ------------------------------------------------------------------ derived

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def out_channels(self) -> int:
        """Network output channels: one per class, plus background for softmax."""
        return self.n_classes + (1 if self.output == "softmax" else 0)

    @property
    def poolings(self) -> int:
        return self.depth - 1

    @property
    def z_pool_count(self) -> int:
        if self.dims == 2 or self.slice_context:
            return 0
        return self.poolings if self.z_poolings is None else self.z_poolings

    @property
    def spatial_multiple(self) -> tuple[int, int, int]:
        """Input sizes (z, y, x) must be multiples of this for the output to align with the input."""
        xy = 2 ** self.poolings
        return (2 ** self.z_pool_count, xy, xy)

    @property
    def kind(self) -> str:
        """``2D``, ``3D`` or ``2.5D`` (a 2D network over each slice and its neighbours)."""
        return "2.5D" if self.slice_context else f"{self.dims}D"

    @property
    def name(self) -> str:
        """Short name that encodes dimension, filters and depth, e.g. ``unet2d_f32_d5``."""
        base = self.architecture if self.architecture != "unet" else "unet"
        suffix = "" if self.residual or self.architecture != "unet" else "_plain"
        context = f"_s{self.slice_context}" if self.slice_context > 1 else ""
        return f"{base}{self.kind.lower()}_f{self.filters}_d{self.depth}{context}{suffix}"

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model settings {sorted(unknown)}; was the model made by a newer fiji-emseg?")
        d = dict(d)
        if "classes" in d:
            d["classes"] = tuple(d["classes"])
        return cls(**d)

    def with_classes(self, classes: tuple[str, ...] | list[str]) -> ModelConfig:
        d = self.to_dict()
        d["classes"] = tuple(classes)
        return ModelConfig.from_dict(d)
