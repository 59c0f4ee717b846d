"""Neural networks over weight space: features, equivariant layers, pooling, the encoder."""

from weightspace.nn.augment import AugmentConfig, augment
from weightspace.nn.batch import GraphBank, GraphBatch
from weightspace.nn.encoder import Encoder, EncoderConfig, EncoderError, ModelLike
from weightspace.nn.features import EdgeEmbedding, NodeEmbedding, ScalarFeatures
from weightspace.nn.layers import DensePlan, EdgeNodeConv, dense_plan
from weightspace.nn.pooling import TransformerPooling
from weightspace.nn.probes import ProbeEncoder, ProbeGenerator, probe_forward

__all__ = [
    "AugmentConfig",
    "DensePlan",
    "EdgeEmbedding",
    "EdgeNodeConv",
    "Encoder",
    "EncoderConfig",
    "EncoderError",
    "GraphBank",
    "GraphBatch",
    "ModelLike",
    "NodeEmbedding",
    "ProbeEncoder",
    "ProbeGenerator",
    "ScalarFeatures",
    "TransformerPooling",
    "augment",
    "dense_plan",
    "probe_forward",
]
