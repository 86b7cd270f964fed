"""Models: backbones and heads built by name, checkpoints, teacher sources and batched inference.

Importing this package registers every built-in architecture. ``create_model(name, ...)`` builds one;
``MODELS.names()`` lists them.
"""

from distill.models import convnet, face, hub_students, resnet_cifar  # noqa: F401  (registration side effects)
from distill.models.convnet import embedding_and_feature_map
from distill.models.registry import MODELS, count_parameters, create_model

__all__ = ["MODELS", "count_parameters", "create_model", "embedding_and_feature_map"]
