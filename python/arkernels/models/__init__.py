"""Model assemblies built on arkernels ops: Mamba-1 and Mamba-2 language models whose parameter names follow
mamba-ssm's MambaLMHeadModel, a VAR-style next-scale transformer and an ACDiT-style block stack with SCAM
(docs/models.md)."""
from arkernels.models._lm import InferenceCache
from arkernels.models.mamba1 import Mamba1Config, Mamba1LMHeadModel, Mamba1Mixer
from arkernels.models.mamba2 import Mamba2Config, Mamba2LMHeadModel, Mamba2Mixer
from arkernels.models.var import VARConfig, VARTransformer
from arkernels.models.acdit import ACDiTConfig, ACDiTStack

__all__ = ["InferenceCache", "Mamba1Config", "Mamba1LMHeadModel", "Mamba1Mixer", "Mamba2Config",
           "Mamba2LMHeadModel", "Mamba2Mixer", "VARConfig", "VARTransformer", "ACDiTConfig", "ACDiTStack"]
