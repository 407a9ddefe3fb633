"""The integer-exact prior: every probability vqcodec codes with is computed here, and only here.

A trained ``PixelSNAIL`` becomes a list of integer operations over the positions of a code map:

- weights and activations are integers in [-127, 127], held in float32 tensors. A matrix product
  sums at most ``CHUNK`` products per float32 pass, so every partial sum is an integer below 2^24
  and exact in any order, blocking, batch shape or device; chunks are added in float64. On the
  CPU they are kept as 8-bit integers and multiplied with 32-bit sums instead: the same exact
  integers;
- scales between layers are applied with single, correctly rounded IEEE operations (float64, or
  float32 where the product is one exact float32 chunk), then rounded half to even;
- ELU, sigmoid and exp are lookup tables built once from the model's scales.

So the probabilities at a position are the same integers whether they are computed for the whole
map at once (the encoder) or a wavefront at a time (the decoder), on a CPU or a GPU. Positions are
rows of per-source caches of shape (N + 2, C), numbered in decoding order so that a wavefront is a
slice of rows; row N stays zero and stands for "outside the region", row N + 1 is scratch that
steps padded to a fixed size write to and nothing reads.
"""

from .arithmetic import Rows
from .backend import cpu_products
from .prior import IntegerPrior
from .state import MapState

__all__ = ["IntegerPrior", "MapState", "Rows", "cpu_products"]
