"""The mask contract in plain PyTorch (docs/contract.md, 'Mask definition'): slow, readable, and
usable on any device.

The compiled kernels must agree with these functions bit for bit; the tests hold them to it.
Words are uint32 values carried in int64 tensors, and every product is split so that no
intermediate leaves the int64 range.
"""

import math

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
WORDS_PER_BLOCK = 4
_MASK32 = 0xFFFFFFFF


def keep_threshold(p: float) -> int:
    """floor(p * 2**32): a word below it keeps its element, so P(keep) = threshold / 2**32."""
    return math.floor(p * 2.0**32)


def _mulhilo32(multiplier: int, x: torch.Tensor):
    """(high, low) 32-bit halves of multiplier * x, exactly, for x in [0, 2**32)."""
    x_low, x_high = x & 0xFFFF, x >> 16
    partial_low = multiplier * x_low  # < 2**48
    partial = multiplier * x_high + (partial_low >> 16)  # < 2**49; product = partial*2**16 + low16
    high = partial >> 16
    low = ((partial & 0xFFFF) << 16) | (partial_low & 0xFFFF)
    return high, low


def philox4x32_10(counter: torch.Tensor, key) -> torch.Tensor:
    """Philox4x32-10 of each row of `counter` (int64, [..., 4], words in [0, 2**32)) under
    `key` = (k0, k1), two Python ints in [0, 2**32). Returns int64 [..., 4] words."""
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key
    for round_index in range(PHILOX_ROUNDS):
        if round_index > 0:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        high0, low0 = _mulhilo32(PHILOX_M0, c0)
        high1, low1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
    return torch.stack([c0, c1, c2, c3], dim=-1)


def _as_uint64(value: int) -> int:
    return value & 0xFFFFFFFFFFFFFFFF  # two's complement: -1 is 2**64 - 1


def keep_mask(numel: int, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
    """The flat boolean keep-mask of global elements element_offset .. element_offset+numel-1,
    on rng_state's device."""
    seed, offset = (_as_uint64(int(v)) for v in rng_state.tolist())
    device = rng_state.device
    index = torch.arange(numel, dtype=torch.int64, device=device) + element_offset
    block = index // WORDS_PER_BLOCK
    counter = torch.stack(
        [block & _MASK32, block >> 32, torch.full_like(block, offset & _MASK32), torch.full_like(block, offset >> 32)],
        dim=-1,
    )
    words = philox4x32_10(counter, (seed & _MASK32, seed >> 32))
    word = words.gather(-1, (index % WORDS_PER_BLOCK).unsqueeze(-1)).squeeze(-1)
    return word < keep_threshold(p)


def bernoulli_mask(shape, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
    """Reference for tinybig_cuda.bernoulli_mask."""
    shape = tuple(shape)
    return keep_mask(math.prod(shape), p, rng_state, element_offset).reshape(shape)


def bernoulli_mask_apply(w: torch.Tensor, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
    """Reference for tinybig_cuda.bernoulli_mask_apply: w where kept, +0.0 where dropped."""
    mask = bernoulli_mask(w.shape, p, rng_state.to(w.device), element_offset)
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device)).contiguous()


# ---------------------------------------------------------------- compact parameters

_BITS_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bernoulli_mask_count(numel: int, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> int:
    """Reference for tinybig_cuda.bernoulli_mask_count: the mask's popcount, as an int."""
    return int(keep_mask(numel, p, rng_state, element_offset).sum())


def bernoulli_mask_expand(values: torch.Tensor, p: float, rng_state: torch.Tensor, shape, element_offset: int = 0) -> torch.Tensor:
    """Reference for tinybig_cuda.bernoulli_mask_expand: `values` at the kept positions (row-major),
    +0.0 elsewhere. Moves bit patterns, so NaN payloads and -0.0 survive."""
    shape = tuple(shape)
    mask = keep_mask(math.prod(shape), p, rng_state.to(values.device), element_offset)
    kept = int(mask.sum())
    if values.numel() != kept:
        raise ValueError(f"expected values to have {kept} elements, the mask's kept count, but got {values.numel()}")
    bits_dtype = _BITS_DTYPE[values.element_size()]
    full = torch.zeros(mask.shape, dtype=bits_dtype, device=values.device)
    full[mask] = values.reshape(-1).view(bits_dtype)
    return full.view(values.dtype).reshape(shape)


def bernoulli_mask_compress(full: torch.Tensor, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
    """Reference for tinybig_cuda.bernoulli_mask_compress: the kept entries of `full`, row-major."""
    mask = keep_mask(full.numel(), p, rng_state.to(full.device), element_offset)
    bits_dtype = _BITS_DTYPE[full.element_size()]
    return full.reshape(-1).view(bits_dtype)[mask].view(full.dtype)
