"""Fuzzing and limits: the op against the pure-PyTorch reference, bit for bit.

Hypothesis draws shapes (0 and 1 sizes included), strided views with storage offsets, dtypes,
keep probabilities (edges included), 64-bit seeds and offsets, and element offsets; the op must
equal tinybig_cuda.reference in every bit, in its gradient too, and leave its inputs untouched.
Then: one tensor past 2**31 elements, and eight threads calling the op at once.
"""

import math
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinybig_cuda import bernoulli_mask, bernoulli_mask_apply, reference

from conftest import DTYPES, as_bits, assert_bitwise_equal, random_bits

pytestmark = pytest.mark.slow  # tensors past 2**31 elements and hypothesis searches

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


KEEP_PROBABILITY_EDGES = [
    0.0,
    1.0,
    0.5,
    2.0**-32,  # threshold 1: only word 0 keeps
    2.0**-33,  # threshold 0 although p > 0
    5e-324,  # the smallest subnormal double
    1.0 - 2.0**-32,  # threshold 2**32 - 1: only word 0xFFFFFFFF drops
    1.0 - 2.0**-53,  # the largest double below 1
    0.1,
    1.0 / 3.0,
]
keep_probabilities = st.one_of(st.sampled_from(KEEP_PROBABILITY_EDGES), st.floats(0.0, 1.0))
int64s = st.one_of(st.sampled_from([0, -1, 1, INT64_MIN, INT64_MAX, 2**32 - 1, 2**32]), st.integers(INT64_MIN, INT64_MAX))
rng_states = st.tuples(int64s, int64s).map(lambda pair: torch.tensor(pair, dtype=torch.int64))


def element_offsets(numel):
    """Offsets with numel elements after them still inside int64 (the op's limit)."""
    top = INT64_MAX - numel
    return st.one_of(
        st.integers(0, 64),
        st.integers(2**32 - 64, 2**32 + 64),
        st.integers(2**34 - 64, 2**34 + 64),
        st.sampled_from([top, top - 1, top - 3]),
        st.integers(0, top),
    )


@st.composite
def strided_tensors(draw):
    """(base, view): a view of `base` with drawn shape, steps, permutation, storage offset and
    possibly an expanded (stride 0) dimension; base holds random bit patterns."""
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(0, 4))
    sizes = draw(st.lists(st.one_of(st.integers(0, 6), st.sampled_from([0, 1, 1, 17, 33])), min_size=ndim, max_size=ndim))
    if math.prod(sizes) > 20000:
        sizes = [min(size, 6) for size in sizes]
    steps = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
    storage_offset = draw(st.integers(0, 5))
    permutation = draw(st.permutations(range(ndim)))
    seed = draw(st.integers(0, 2**32 - 1))

    spans = [size * step for size, step in zip(sizes, steps)]
    span_numel = math.prod(spans)  # 1 for a 0-d tensor
    base = random_bits((storage_offset + max(span_numel, 1),), dtype, seed=seed)
    view = base[storage_offset:storage_offset + span_numel].view(spans)
    if ndim:
        view = view[tuple(slice(None, None, step) for step in steps)].permute(permutation)
    if draw(st.booleans()):
        position = draw(st.integers(0, view.dim()))
        view = view.unsqueeze(position).expand(*view.shape[:position], draw(st.integers(0, 3)), *view.shape[position:])
    return base, view


@FUZZ
@given(tensors=strided_tensors(), p=keep_probabilities, state=rng_states, data=st.data())
def test_apply_matches_the_reference_bit_for_bit(tensors, p, state, data):
    base, w = tensors
    element_offset = data.draw(element_offsets(w.numel()))
    base_before, state_before = base.clone(), state.clone()

    actual = bernoulli_mask_apply(w, p, state, element_offset)
    expected = reference.bernoulli_mask_apply(w, p, state, element_offset)

    assert actual.shape == w.shape and actual.dtype == w.dtype and actual.is_contiguous()
    assert_bitwise_equal(actual, expected)
    # The op never changes its inputs (nor anything they share storage with).
    assert_bitwise_equal(base, base_before)
    assert torch.equal(state, state_before)


@FUZZ
@given(
    shape=st.lists(st.one_of(st.integers(0, 9), st.sampled_from([0, 1, 257])), min_size=0, max_size=4).filter(lambda s: math.prod(s) <= 70000),
    p=keep_probabilities,
    state=rng_states,
    data=st.data(),
)
def test_mask_matches_the_reference(shape, p, state, data):
    element_offset = data.draw(element_offsets(math.prod(shape)))
    actual = bernoulli_mask(shape, p, state, element_offset)
    assert actual.dtype == torch.bool and tuple(actual.shape) == tuple(shape)
    assert torch.equal(actual, reference.bernoulli_mask(shape, p, state, element_offset))


@settings(max_examples=60, deadline=None)
@given(tensors=strided_tensors(), p=keep_probabilities, state=rng_states, data=st.data())
def test_gradient_is_the_same_mask_applied_to_the_upstream_gradient(tensors, p, state, data):
    _, w = tensors
    element_offset = data.draw(element_offsets(w.numel()))
    leaf = w.detach().clone().requires_grad_()
    upstream = random_bits(w.shape, w.dtype, seed=data.draw(st.integers(0, 2**32 - 1)))
    bernoulli_mask_apply(leaf, p, state, element_offset).backward(upstream)
    assert_bitwise_equal(leaf.grad, reference.bernoulli_mask_apply(upstream, p, state, element_offset))


def test_threads_spanning_many_tasks_with_unaligned_offsets():
    # More elements than one parallel task (2**15), with offsets at every residue mod 4, so the
    # task boundaries fall inside Philox blocks.
    w = torch.randn(3 * 2**15 + 11)
    state = torch.tensor([-5, 2**40], dtype=torch.int64)
    for element_offset in (0, 1, 2, 3, 2**32 - 2):
        actual = bernoulli_mask_apply(w, 0.3, state, element_offset)
        assert_bitwise_equal(actual, reference.bernoulli_mask_apply(w, 0.3, state, element_offset))


# ---- past 2**31 elements ------------------------------------------------------------------------

LARGE_SHAPE = (2**16 + 1, 2**15 + 3)  # 2_147_713_027 elements: 229_379 past 2**31, odd in both sizes
WINDOW = 4099


def _available_bytes():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(_available_bytes() < 10 * 2**30, reason="needs ~8.6 GB free: a 2**31-element bfloat16 input and output")
def test_tensor_past_2_pow_31_elements_is_masked_right_to_its_end():
    numel = math.prod(LARGE_SHAPE)
    assert numel > 2**31
    state = torch.tensor([0x5EED, 0xC0FFEE], dtype=torch.int64)
    # Only the checked windows are written: the rest of the input may hold anything, and leaving
    # it untouched saves writing (and faulting in) 4.3 GB.
    w = torch.empty(LARGE_SHAPE, dtype=torch.bfloat16)
    flat = w.view(-1)
    # Distinct non-zero values where the output is checked, so a shifted read would show.
    windows = {"head": 0, "int32 edge": 2**31 - WINDOW // 2, "tail": numel - WINDOW}
    generator = torch.Generator().manual_seed(1)
    for start in windows.values():
        flat[start:start + WINDOW] = torch.rand(WINDOW, generator=generator).to(torch.bfloat16) + 1

    out = bernoulli_mask_apply(w, 0.5, state)  # the one op call

    assert out.shape == w.shape and out.dtype == torch.bfloat16
    out_flat = out.view(-1)
    for name, start in windows.items():
        expected = reference.bernoulli_mask_apply(flat[start:start + WINDOW], 0.5, state, element_offset=start)
        assert torch.equal(as_bits(out_flat[start:start + WINDOW]), as_bits(expected)), name
    last_row_start = (LARGE_SHAPE[0] - 1) * LARGE_SHAPE[1]
    kept = reference.bernoulli_mask((LARGE_SHAPE[1],), 0.5, state, element_offset=last_row_start)
    assert_bitwise_equal(out[-1][kept], w[-1][kept])  # whatever the input held there
    assert not out[-1][~kept].view(torch.int16).any()  # +0.0 in every dropped slot


# ---- threads ------------------------------------------------------------------------------------

def test_eight_threads_at_once_give_the_sequential_results():
    thread_count, repeats = 8, 4
    generator = torch.Generator().manual_seed(8)
    jobs = []
    for k in range(thread_count):
        dtype = DTYPES[k % len(DTYPES)]
        w = torch.randn(97 + k, 1013, generator=generator).to(dtype)  # ~100k elements: several tasks each
        state = torch.randint(INT64_MIN, INT64_MAX, (2,), dtype=torch.int64, generator=generator)
        upstream = torch.randn(w.shape, generator=generator).to(dtype)
        jobs.append((w, state, 0.1 + 0.1 * k, k * 2**33 + k, upstream))
    originals = [(w.clone(), state.clone()) for w, state, *_ in jobs]

    def run(w, state, p, element_offset, upstream):
        leaf = w.detach().requires_grad_()
        out = bernoulli_mask_apply(leaf, p, state, element_offset)
        out.backward(upstream)
        return out.detach(), leaf.grad

    sequential = [run(*job) for job in jobs]
    results = [[None] * repeats for _ in range(thread_count)]
    errors = []
    barrier = threading.Barrier(thread_count)

    def worker(index):
        try:
            barrier.wait(timeout=60)
            for r in range(repeats):
                results[index][r] = run(*jobs[index])
        except BaseException as error:  # surfaced below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(thread_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
    for k in range(thread_count):
        for out, grad in results[k]:
            assert_bitwise_equal(out, sequential[k][0])
            assert_bitwise_equal(grad, sequential[k][1])
        w, state = originals[k]
        assert_bitwise_equal(jobs[k][0], w)
        assert torch.equal(jobs[k][1], state)
