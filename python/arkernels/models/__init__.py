"""Model assemblies built on arkernels ops: Mamba-1 and Mamba-2 language models whose parameter names follow
mamba-ssm's MambaLMHeadModel (docs/models.md)."""
from arkernels.models._lm import InferenceCache
from arkernels.models.mamba1 import Mamba1Config, Mamba1LMHeadModel, Mamba1Mixer

__all__ = ["InferenceCache", "Mamba1Config", "Mamba1LMHeadModel", "Mamba1Mixer"]
