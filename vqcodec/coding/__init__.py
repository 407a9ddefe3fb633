"""From code maps to bytes and back: the integer priors and their wavefront steps, tiles and
segments, the range coder, rate-distortion optimisation, the restoration filter, partial decoding
and decoding in forked processes."""
