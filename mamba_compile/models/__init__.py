"""Mamba language models (Mamba-1, Mamba-2, hybrid attention) built on the mamba_compile ops."""

from .cache import InferenceCache
from .config import MambaConfig
from .generation import GenerateOutput, sample
from .model import LMOutput, MambaLM
from .tokenizer import ByteTokenizer, load_tokenizer
from .training import GraphedTrainStep

__all__ = ["ByteTokenizer", "GenerateOutput", "GraphedTrainStep", "InferenceCache", "LMOutput", "MambaConfig", "MambaLM",
           "load_tokenizer", "sample"]
