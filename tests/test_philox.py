"""Known-answer tests of Philox4x32-10, the keep threshold and the mask: the compiled header, the
Python reference, and the ops, against the tables of docs/contract.md, 'Known-answer vectors'."""

from pathlib import Path

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import _C, reference

from conftest import DEVICES, STATE_VALUES, contract_table, make_state


def _words(cell):
    return [int(word, 16) for word in cell.split()]


# Random123's kat_vectors for philox4x32_10: (counter, key, result).
KAT_VECTORS = [tuple(_words(cell) for cell in row) for row in contract_table("### Philox4x32-10")]
KAT_IDS = ["zeros", "ones", "pi"]
WORDS_COUNTER0_KEY0 = KAT_VECTORS[0][2]


@pytest.mark.parametrize("counter, key, expected", KAT_VECTORS, ids=KAT_IDS)
def test_compiled_philox_known_answers(counter, key, expected):
    assert list(_C.philox4x32_10(counter, key)) == expected


@pytest.mark.parametrize("counter, key, expected", KAT_VECTORS, ids=KAT_IDS)
def test_reference_philox_known_answers(counter, key, expected):
    words = reference.philox4x32_10(torch.tensor([counter], dtype=torch.int64), tuple(key))
    assert words.dtype == torch.int64
    assert words.tolist() == [expected]


def test_reference_philox_batches_rows_independently():
    counters = torch.tensor([kat[0] for kat in KAT_VECTORS[:2]], dtype=torch.int64)
    # Each row under one key: row 0 with the zero key must give the zero-key answer whatever row 1 holds.
    words = reference.philox4x32_10(counters, (0, 0))
    assert words[0].tolist() == KAT_VECTORS[0][2]
    assert words[1].tolist() == list(_C.philox4x32_10(KAT_VECTORS[1][0], [0, 0]))


def _probes(word):
    """(p, kept?) pairs that put floor(p * 2**32) just below, at, and just above `word`."""
    return [
        (word / 2**32, False),  # threshold == word: word < threshold is false
        ((word + 0.5) / 2**32, False),  # floor takes it back to word
        ((word + 1) / 2**32, True),  # threshold == word + 1
        ((word - 1) / 2**32, False),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("position", range(4))
def test_op_known_answer_counter0_key0(device, position):
    """seed = 0, offset = 0: elements 0..3 are decided by Philox(counter 0, key 0), word k for element k."""
    state = make_state(0, 0, device)
    word = WORDS_COUNTER0_KEY0[position]
    w = torch.ones(4, dtype=torch.float64, device=device)
    for p, kept in _probes(word):
        expected_mask = torch.tensor([other < int(p * 2**32) for other in WORDS_COUNTER0_KEY0], device=device)
        assert bool(expected_mask[position]) == kept
        out = tinybig_cuda.bernoulli_mask_apply(w, p, state)
        assert torch.equal(out != 0, expected_mask), (hex(word), p)
        assert torch.equal(tinybig_cuda.bernoulli_mask((4,), p, state), expected_mask), (hex(word), p)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [-1, -(2**63), 0x0123456789ABCDEF, 2**32])
@pytest.mark.parametrize("offset", [-1, 2**63 - 1, 2**32 + 5])
@pytest.mark.parametrize("first_block", [0, 2**32 - 1, 2**40 + 3])
def test_op_words_match_compiled_philox(device, seed, offset, first_block):
    """The op's keep decisions equal word < threshold for the compiled Philox on
    counter (j_lo, j_hi, off_lo, off_hi), key (seed_lo, seed_hi), seed and offset read as unsigned
    64-bit (two's complement), including blocks whose index needs the counter's high word."""
    blocks = 3
    seed_u, offset_u = seed % 2**64, offset % 2**64
    words = []
    for j in range(first_block, first_block + blocks):
        words += _C.philox4x32_10(
            [j % 2**32, j >> 32, offset_u % 2**32, offset_u >> 32], [seed_u % 2**32, seed_u >> 32]
        )
    threshold_p = 0.5
    expected = torch.tensor([word < 2**31 for word in words], device=device)
    state = make_state(seed, offset, device)
    mask = tinybig_cuda.bernoulli_mask((4 * blocks,), threshold_p, state, element_offset=4 * first_block)
    assert torch.equal(mask, expected)
    # The same decisions from a word threshold that is not a power of two.
    for word in words[:4]:
        p = (word + 1) / 2**32
        expected = torch.tensor([other <= word for other in words], device=device)
        out = tinybig_cuda.bernoulli_mask_apply(
            torch.ones(4 * blocks, dtype=torch.float32, device=device), p, state, element_offset=4 * first_block
        )
        assert torch.equal(out != 0, expected)


@pytest.mark.parametrize("seed", STATE_VALUES)
def test_reference_keep_mask_matches_compiled_philox(seed):
    """The reference, on its own, follows the contract (so agreement with it means something)."""
    offset_u = (3 * seed + 7) % 2**64
    offset = offset_u - 2**64 if offset_u >= 2**63 else offset_u  # as int64
    state = make_state(seed, offset)
    seed_u, offset_u = seed % 2**64, offset % 2**64
    words = []
    for j in range(3):
        words += _C.philox4x32_10([j, 0, offset_u % 2**32, offset_u >> 32], [seed_u % 2**32, seed_u >> 32])
    p = 0.3
    threshold = int(p * 2**32)
    expected = torch.tensor([word < threshold for word in words])
    assert torch.equal(reference.keep_mask(12, p, state), expected)


def test_the_contract_holds_random123s_vectors_and_so_do_the_cpp_tests():
    # The table is read, not trusted: these are Random123's published answers.
    assert KAT_VECTORS[0] == ([0] * 4, [0] * 2, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8])
    assert len(KAT_VECTORS) == len(KAT_IDS)
    cpp_test = (Path(__file__).parent / "cpp" / "test_philox_contract.cpp").read_text().lower()
    for counter, key, expected in KAT_VECTORS:
        for word in counter + key + expected:
            assert f"0x{word:08x}" in cpp_test or word == 0, f"{word:08x} is not in tests/cpp/test_philox_contract.cpp"


THRESHOLDS = [(float(p), int(threshold)) for p, threshold, _ in contract_table("### Keep thresholds")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p, threshold", THRESHOLDS, ids=[repr(p) for p, _ in THRESHOLDS])
def test_keep_thresholds_of_the_contract(device, p, threshold):
    assert reference.keep_threshold(p) == threshold
    # The kernels' threshold, seen through the four words of counter 0, key 0 (seed 0, offset 0).
    state = make_state(0, 0, device)
    expected = torch.tensor([word < threshold for word in WORDS_COUNTER0_KEY0], device=device)
    assert torch.equal(tinybig_cuda.bernoulli_mask((4,), p, state), expected)
    assert torch.equal(tinybig_cuda.bernoulli_mask_apply(torch.ones(4, device=device), p, state) != 0, expected)


MASKS = contract_table("### Masks")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row", MASKS, ids=[f"row{k + 1}" for k in range(len(MASKS))])
def test_masks_of_the_contract(device, row):
    seed, offset, p, element_offset, bits = row
    state = make_state(int(seed), int(offset), device)
    p, element_offset = float(p), int(element_offset)
    expected = torch.tensor([bit == "1" for bit in bits], device=device)
    assert torch.equal(tinybig_cuda.bernoulli_mask((len(bits),), p, state, element_offset), expected)
    assert torch.equal(reference.bernoulli_mask((len(bits),), p, state, element_offset), expected)
    w = torch.full((len(bits),), -1.5, dtype=torch.bfloat16, device=device)
    assert torch.equal(tinybig_cuda.bernoulli_mask_apply(w, p, state, element_offset) != 0, expected)
