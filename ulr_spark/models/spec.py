"""What a trained model is: its architecture, input shapes and options."""

from __future__ import annotations

from dataclasses import KW_ONLY, asdict, dataclass, field, fields
from typing import Any

from ulr_spark.models.options import ModelOptions


@dataclass(frozen=True)
class ModelSpec(ModelOptions):
    """Everything needed to rebuild a model from its weights.

    ``name`` is what the model is called in tables (a configured variant may be called
    ``additive_dropout``); ``architecture`` is the class that implements it (the registry key
    in :mod:`ulr_spark.models.registry`). The options of :class:`ModelOptions` follow as
    keyword arguments.
    """

    name: str
    num_features: int
    max_slate_size: int
    num_contexts: int
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    architecture: str = ""
    _: KW_ONLY
    grid_columns: int = 0  # 0: a list; n > 0: a grid n columns wide, positions in row-major order
    # The last len(categorical_buckets) of the num_features inputs are category indices
    # (ulr_spark.features.encoding), each field with this many values and an embedding this wide.
    categorical_buckets: list[int] = field(default_factory=list)
    embedding_dims: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.architecture:
            object.__setattr__(self, "architecture", self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelSpec:
        """Rebuild a spec from a model card.

        Raises:
            ValueError: the card holds a key this version does not know (an artifact written by
                a newer version, whose model would be rebuilt wrongly without it).
        """
        known = {f.name for f in fields(ModelSpec)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"the model spec holds key(s) {unknown} that this version of ulr-spark does not know: the artifact "
                "was written by a newer version; score it with that version, or retrain"
            )
        return ModelSpec(**data)
