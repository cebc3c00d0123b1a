"""Random streams per prompt, so that what a prompt samples does not depend on which rank, which
batch or which chunk it was generated in.

A step's sampling seed and a prompt's position in the step's whole batch (over every rank) give
that prompt its own seed; its G samples are streams ``0 .. G - 1`` of it. The same train.seed
then produces the same completions on 1 rank and on N ranks, and a resumed run re-creates a
step's samples from the step alone.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One round of SplitMix64 (Steele, Lea and Flood 2014): a bijective 64-bit mixer whose
    outputs for consecutive inputs look independent."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(*keys: int) -> int:
    """A 62-bit seed from integer keys, e.g. ``stream_seed(step_seed, prompt_index)``: distinct
    keys give unrelated seeds (and room to add a sample index below 2**62 without wrapping)."""
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (k & _MASK64))
    return h >> 2
