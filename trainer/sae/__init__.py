"""Sparse autoencoders: the module (`autoencoder`), one file per variant (`variants/`), and their
training (`source` → `state` → `train`, with `resample`).

    autoencoder   SparseAutoencoder: parameters, encode/decode, save/load in SAELens's layout
    variants/     paper, l1_decnorm, topk, batchtopk, jumprelu, matryoshka_batchtopk: activation, loss,
                  fast backward
    sparse_ops    the embedding-bag kernels the fast backwards share, and AuxK
    planted       planted parent/child directions and the feature-absorption measure
    source        ActivationSource: fp32 batches from harvested shards or a user's file
    state         TrainState: everything a checkpoint holds
    resample      the paper's neuron resampling
    train         train_step and the loop, train_sae
"""

from trainer.sae.autoencoder import SparseAutoencoder
from trainer.sae.resample import maybe_resample, resample_dead_latents, resample_steps
from trainer.sae.source import ActivationShapeError, ActivationSource, open_activation_source
from trainer.sae.state import ResampleResult, StepStats, TrainState, init_train_state
from trainer.sae.train import TrainSAEResult, maybe_checkpoint, train_sae, train_step, write_training_log
from trainer.sae.variants import VARIANTS, LossTerms, Variant, get_variant, sparsity_coefficient

__all__ = [
    "VARIANTS",
    "ActivationShapeError",
    "ActivationSource",
    "LossTerms",
    "ResampleResult",
    "SparseAutoencoder",
    "StepStats",
    "TrainSAEResult",
    "TrainState",
    "Variant",
    "get_variant",
    "init_train_state",
    "maybe_checkpoint",
    "maybe_resample",
    "open_activation_source",
    "resample_dead_latents",
    "resample_steps",
    "sparsity_coefficient",
    "train_sae",
    "train_step",
    "write_training_log",
]
