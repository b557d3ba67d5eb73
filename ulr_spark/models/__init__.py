"""Click models: losses, towers, the base click model, one module per model family, the
registry, and the examination-curve definition (:mod:`ulr_spark.models.curves`).

Import from the modules themselves (``ulr_spark.models.registry``, ``ulr_spark.models.spec``);
this package file stays empty so that reading a model's options does not import torch.
"""
