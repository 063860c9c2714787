"""The exact GGUF re-quantisation: Q4_1 and Q8_0 blocks come back without loss."""

from __future__ import annotations

import numpy as np

from edge_models.requantize import BLOCK, _q4_blocks, _q8_blocks, _unpack4


def q4_1_weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Weights exactly on a Q4_1 grid: per block d * q + m, with both q = 0 and q = 15 used."""
    rng = np.random.default_rng(seed)
    blocks = cols // BLOCK
    q = rng.integers(0, 16, size=(rows, blocks, BLOCK))
    q[..., 0], q[..., 1] = 0, 15  # GGUF's Q4_1 takes the block's min and max as its range
    d = rng.uniform(0.001, 0.05, size=(rows, blocks, 1)).astype(np.float32)
    m = rng.uniform(-0.4, 0.0, size=(rows, blocks, 1)).astype(np.float32)
    return (d * q + m).astype(np.float32).reshape(rows, cols)


def test_q4_1_blocks_are_recovered_exactly() -> None:
    weight = q4_1_weights(64, 576)
    packed, scale, offset = _q4_blocks(weight)
    rebuilt = scale[..., None] * (_unpack4(packed) - 8) + offset[..., None]
    assert packed.shape == (64, 576 // BLOCK, BLOCK // 2)
    assert np.abs(rebuilt.reshape(64, 576) - weight).max() <= 1e-6 * np.abs(weight).max()


def test_q8_0_blocks_are_recovered_exactly() -> None:
    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, size=(32, 576 // BLOCK, BLOCK))
    q[..., 0] = 127
    d = rng.uniform(0.001, 0.01, size=(32, 576 // BLOCK, 1)).astype(np.float32)
    weight = (d * q).astype(np.float32).reshape(32, 576)
    codes, scale, zero = _q8_blocks(weight)
    rebuilt = scale[..., None] * (codes.astype(np.float32) - 128)
    assert (zero == 128).all()
    assert np.abs(rebuilt.reshape(32, 576) - weight).max() <= 1e-6 * np.abs(weight).max()


def test_plain_float_weights_lose_only_quantisation_error() -> None:
    weight = np.random.default_rng(2).normal(0, 0.02, size=(16, 64)).astype(np.float32)
    packed, scale, offset = _q4_blocks(weight)
    rebuilt = scale[..., None] * (_unpack4(packed) - 8) + offset[..., None]
    # Off the grid, round-to-nearest 4-bit error is at most half a step per block.
    assert (np.abs(rebuilt.reshape(16, 64) - weight) <= scale.repeat(BLOCK, axis=1) / 2 + 1e-7).all()
