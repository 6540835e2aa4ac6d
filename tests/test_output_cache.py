"""The CPU output cache (csrc/ops/output_memory.cpp): large outputs reuse freed memory, and the
reused memory never leaks its old contents into a result."""

import os
import sys
import threading

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import reference

from conftest import assert_bitwise_equal, error_pattern, make_state, random_bits

MiB = 1 << 20
CACHED_MIN_BYTES = 8 * MiB  # kMinCachedOutputBytes
# float32 sizes whose outputs are cacheable: 8 MiB and 16 MiB, each a whole number of 2 MiB pages.
SMALL_BLOCK = (2 * MiB,)
LARGE_BLOCK = (4 * MiB,)


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with an empty cache at the default limit, and leaves it so."""
    limit = tinybig_cuda.cpu_output_cache_info()["limit_bytes"]
    tinybig_cuda.empty_cpu_output_cache()
    yield
    tinybig_cuda.set_cpu_output_cache_limit(limit)
    tinybig_cuda.empty_cpu_output_cache()


def info():
    return tinybig_cuda.cpu_output_cache_info()


def masked(shape, seed=0):
    return tinybig_cuda.bernoulli_mask_apply(torch.ones(shape), 0.5, make_state(seed, 0))


def test_default_limit_is_one_gib():
    assert info()["limit_bytes"] == 1 << 30


def test_freed_output_is_reused_and_fully_overwritten():
    w = random_bits(SMALL_BLOCK, torch.float32, seed=1)
    state = make_state(7, 3)
    first = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    address = first.data_ptr()
    first.fill_(float("nan"))  # what the next output must not show
    del first
    assert info()["cached_bytes"] == CACHED_MIN_BYTES
    hits = info()["hits"]

    second = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)

    assert second.data_ptr() == address
    assert info()["hits"] == hits + 1 and info()["cached_bytes"] == 0
    assert_bitwise_equal(second, reference.bernoulli_mask_apply(w, 0.5, state))


@pytest.mark.slow  # many 8 MiB-and-larger outputs
def test_a_live_output_is_never_handed_out_twice():
    outputs = [masked(SMALL_BLOCK, seed) for seed in range(3)]
    assert len({out.data_ptr() for out in outputs}) == 3
    for seed, out in enumerate(outputs):
        assert_bitwise_equal(out, reference.bernoulli_mask_apply(torch.ones(SMALL_BLOCK), 0.5, make_state(seed, 0)))


def test_a_freed_block_is_handed_to_one_of_two_live_outputs_only():
    """One cached block and two outputs of its size alive at once: the second must get memory of
    its own, not the block the first already holds."""
    masked(SMALL_BLOCK, seed=9)  # made and freed at once: its block is cached
    assert info()["cached_blocks"] == 1
    first, second = masked(SMALL_BLOCK, seed=1), masked(SMALL_BLOCK, seed=2)
    assert info()["cached_blocks"] == 0
    ranges = sorted((out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()) for out in (first, second))
    assert ranges[0][1] <= ranges[1][0], "two live outputs share memory"
    for seed, out in ((1, first), (2, second)):
        assert_bitwise_equal(out, reference.bernoulli_mask_apply(torch.ones(SMALL_BLOCK), 0.5, make_state(seed, 0)))


@pytest.mark.slow  # many 8 MiB-and-larger outputs
def test_every_cpu_op_output_is_cached_and_exact():
    """Each op, run again on its freed output filled with garbage, gives the bits of the
    reference. (Fresh memory from the OS is zeros, so only a reused block shows a kernel that
    skips writing the dropped entries.) float64 keeps the slow reference to 2M elements."""
    state = make_state(11, 5)
    full = random_bits((LARGE_BLOCK[0] // 2,), torch.float64, seed=2)
    kept = tinybig_cuda.count_kept(full.numel(), 0.75, state)
    values = random_bits((kept,), torch.float64, seed=3)
    ops = {
        "apply": (lambda: tinybig_cuda.bernoulli_mask_apply(full, 0.75, state),
                  lambda: reference.bernoulli_mask_apply(full, 0.75, state)),
        "mask": (lambda: tinybig_cuda.bernoulli_mask((8 * MiB,), 0.75, state),
                 lambda: reference.bernoulli_mask((8 * MiB,), 0.75, state)),
        "expand": (lambda: tinybig_cuda.bernoulli_mask_expand(values, 0.75, state, full.shape),
                   lambda: reference.bernoulli_mask_expand(values, 0.75, state, full.shape)),
        "compress": (lambda: tinybig_cuda.bernoulli_mask_compress(full, 0.75, state, kept),
                     lambda: reference.bernoulli_mask_compress(full, 0.75, state)),
    }
    for name, (op, expected) in ops.items():
        first = op()
        assert first.untyped_storage().nbytes() >= CACHED_MIN_BYTES, name
        first.view(torch.uint8).fill_(0xA5)
        del first
        hits = info()["hits"]
        second = op()
        assert info()["hits"] == hits + 1, name
        assert_bitwise_equal(second, expected())


def test_small_outputs_bypass_the_cache():
    before = info()
    for _ in range(3):
        masked((CACHED_MIN_BYTES // 4 - 1,))
    after = info()
    assert (after["hits"], after["misses"], after["cached_bytes"]) == (before["hits"], before["misses"], 0)


def test_limit_zero_keeps_nothing():
    tinybig_cuda.set_cpu_output_cache_limit(0)
    hits = info()["hits"]
    for _ in range(3):
        masked(SMALL_BLOCK)
    assert info()["cached_bytes"] == 0 and info()["hits"] == hits


def test_a_block_larger_than_the_limit_is_freed():
    tinybig_cuda.set_cpu_output_cache_limit(CACHED_MIN_BYTES)
    masked(LARGE_BLOCK)
    assert info()["cached_bytes"] == 0
    masked(SMALL_BLOCK)
    assert info()["cached_bytes"] == CACHED_MIN_BYTES


def test_oldest_blocks_are_evicted_first():
    tinybig_cuda.set_cpu_output_cache_limit(3 * CACHED_MIN_BYTES)
    oldest, large, newest = masked(SMALL_BLOCK), masked(LARGE_BLOCK), masked(SMALL_BLOCK)
    newest_address, large_address = newest.data_ptr(), large.data_ptr()
    del oldest, large  # cached: 8 MiB, then 16 MiB: the limit
    del newest  # 8 MiB more: the oldest block must go
    assert info()["cached_bytes"] == 3 * CACHED_MIN_BYTES and info()["cached_blocks"] == 2
    assert masked(SMALL_BLOCK).data_ptr() == newest_address
    assert masked(LARGE_BLOCK).data_ptr() == large_address


def test_lowering_the_limit_frees_at_once():
    outputs = [masked(SMALL_BLOCK, seed) for seed in range(3)]
    del outputs
    assert info()["cached_bytes"] == 3 * CACHED_MIN_BYTES
    tinybig_cuda.set_cpu_output_cache_limit(CACHED_MIN_BYTES)
    assert info()["cached_bytes"] == CACHED_MIN_BYTES and info()["cached_blocks"] == 1
    tinybig_cuda.empty_cpu_output_cache()
    assert info()["cached_bytes"] == 0 and info()["cached_blocks"] == 0


def test_blocks_in_use_return_after_the_cache_is_emptied():
    out = masked(SMALL_BLOCK)
    tinybig_cuda.empty_cpu_output_cache()
    del out
    assert info()["cached_bytes"] == CACHED_MIN_BYTES


def test_cached_output_can_be_resized():
    out = masked(SMALL_BLOCK)
    expected = out.clone()
    out.resize_(LARGE_BLOCK)  # new memory from the cache's allocator; the old block returns
    assert info()["cached_bytes"] == CACHED_MIN_BYTES
    out[SMALL_BLOCK[0]:] = 1.0
    assert_bitwise_equal(out[: SMALL_BLOCK[0]], expected)
    assert out[SMALL_BLOCK[0]:].eq(1.0).all()


@pytest.mark.slow  # many 8 MiB-and-larger outputs
def test_gradients_through_cached_outputs_are_exact():
    w = torch.randn(SMALL_BLOCK, requires_grad=True)
    state = make_state(5, 0)
    hits = info()["hits"]
    for _ in range(3):  # the later forwards and backwards run on reused blocks
        (grad,) = torch.autograd.grad(tinybig_cuda.bernoulli_mask_apply(w, 0.5, state), w, torch.ones(SMALL_BLOCK))
        assert_bitwise_equal(grad, reference.bernoulli_mask_apply(torch.ones(SMALL_BLOCK), 0.5, state))
        del grad
    assert info()["hits"] == hits + 4  # the first forward and backward take new memory, the rest reuse it


@pytest.mark.slow  # many 8 MiB-and-larger outputs
def test_threads_sharing_the_cache_get_exact_results():
    ones = torch.ones(SMALL_BLOCK)
    expected = {seed: reference.bernoulli_mask_apply(ones, 0.5, make_state(seed, 0)) for seed in range(4)}
    failures = []

    def work(seed):
        for _ in range(10):
            out = tinybig_cuda.bernoulli_mask_apply(ones, 0.5, make_state(seed, 0))
            if not torch.equal(out, expected[seed]):
                failures.append(seed)

    hits = info()["hits"]
    threads = [threading.Thread(target=work, args=(seed,)) for seed in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert info()["hits"] > hits
    # Each thread holds at most two outputs at once (the previous one until `out` is rebound).
    assert info()["cached_bytes"] == info()["cached_blocks"] * CACHED_MIN_BYTES <= 8 * CACHED_MIN_BYTES


@pytest.mark.parametrize("bad, error, got", [(-1, ValueError, "-1"), (2**63, ValueError, str(2**63)),
                                             (1.5, TypeError, "1.5 of type float"), ("8", TypeError, "'8' of type str"),
                                             (True, TypeError, "True of type bool")])
def test_bad_limit_is_refused_and_changes_nothing(bad, error, got):
    before = info()["limit_bytes"]
    with pytest.raises(error, match=error_pattern("limit_bytes", "int", got)):
        tinybig_cuda.set_cpu_output_cache_limit(bad)
    assert info()["limit_bytes"] == before


def test_profiler_counts_cached_outputs_as_allocated_while_in_use():
    from torch.profiler import profile

    masked(SMALL_BLOCK)  # a cached block, so that every call below is a hit
    with profile(profile_memory=True) as prof:
        for _ in range(3):
            masked(SMALL_BLOCK)
    events = {event.key: event for event in prof.key_averages()}
    assert events["tinybig_cuda::bernoulli_mask_apply"].self_cpu_memory_usage == 3 * CACHED_MIN_BYTES
    assert events["[memory]"].self_cpu_memory_usage <= -3 * CACHED_MIN_BYTES  # and freed again


@pytest.mark.skipif(not hasattr(torch, "_lazy_clone"), reason=f"torch {torch.__version__} has no copy-on-write clones")
def test_cached_outputs_can_be_lazily_cloned():
    """torch._lazy_clone (a copy-on-write clone) needs a DataPtr whose context is its data, as
    torch's own CPU tensors have."""
    out = masked(SMALL_BLOCK)
    expected = out.clone()
    clone = torch._lazy_clone(out)
    assert torch._C._is_cow_tensor(clone) and torch._C._is_cow_tensor(out)  # shared until written
    clone[0] = 7.0  # copies the clone's data
    assert_bitwise_equal(out, expected)
    assert clone[0] == 7.0 and torch.equal(clone[1:], expected[1:])
    del out, clone
    # The shared block came back once both tensors were freed.
    assert info()["cached_bytes"] >= CACHED_MIN_BYTES
    hits = info()["hits"]
    masked(SMALL_BLOCK)
    assert info()["hits"] == hits + 1


def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_emptying_the_cache_returns_its_memory_to_the_os():
    """glibc serves blocks of up to 32 MiB from its heap once it has raised its mmap threshold
    (which freeing one such block does), and keeps freed heap memory: the cache's blocks must come
    from memory it can really give back. The outputs come from expand with p = 0, whose only input
    is empty, so no other large allocation muddies the count."""
    state = make_state(3, 4)
    sizes = [(n * MiB // 4,) for n in (8, 12, 16, 24, 32)]  # float32 outputs of 8-32 MiB

    def outputs():
        return [tinybig_cuda.bernoulli_mask_expand(torch.empty(0), 0.0, state, size) for size in sizes]

    before = resident_bytes()
    for _ in range(3):  # the first round's frees raise glibc's threshold; later rounds would use its heap
        held = outputs()
        grown = resident_bytes() - before
        del held
        assert info()["cached_bytes"] == sum(size[0] * 4 for size in sizes)
        tinybig_cuda.empty_cpu_output_cache()
    kept = resident_bytes() - before
    assert grown > 80 * MiB and kept < 8 * MiB, (grown / MiB, kept / MiB)
