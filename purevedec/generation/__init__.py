"""Generation: options, logits processors, the sample and beam loops, and ``generate``.
Imports only the model core."""

from .search import GenerateOutput, GenerationResult, generate, generate_core
from .options import GenerationConfig
from .growing import generate_growing
from .engine import Decoded, generate_many, stream
from .beam_slots import Hypothesis

__all__ = ["Decoded", "GenerateOutput", "GenerationConfig", "GenerationResult", "Hypothesis", "generate",
           "generate_core", "generate_growing", "generate_many", "stream"]
