"""Running a function on several gloo processes of this machine, for the examples and the
distributed tests: the one launcher they share.

    run_ranks(worker, world_size, timeout_s, *args)   # worker(rank, *args) on each rank
    join_ranks(rank, world_size, timeout_s)           # in the worker: its process group
    exit_rank()                                       # in the worker, once it succeeded
"""

import datetime
import os
import sys
import tempfile
import time

import torch.distributed as dist
import torch.multiprocessing as mp

_STORE_FILE = "TINYBIG_GLOO_STORE_FILE"


def run_ranks(worker, world_size, timeout_s, *args):
    """Runs worker(rank, *args) on `world_size` processes; returns once all finished, raises if one
    failed (and stops the others), and exits the program if they run past `timeout_s`."""
    # The ranks meet through a file, not a TCP port: a free port picked here could be taken by
    # another process before rank 0 binds it.
    with tempfile.TemporaryDirectory() as store_directory:
        os.environ[_STORE_FILE] = os.path.join(store_directory, "store")  # the spawned ranks inherit it
        context = mp.spawn(worker, nprocs=world_size, join=False, args=args)
        deadline = time.monotonic() + timeout_s
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.terminate()
                sys.exit(f"timed out after {timeout_s} s")


def join_ranks(rank, world_size, timeout_s):
    """The worker's process group (gloo), through run_ranks' rendezvous file."""
    dist.init_process_group("gloo", init_method=f"file://{os.environ[_STORE_FILE]}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))


def exit_rank():
    """Ends a worker that succeeded (and destroyed its process group) without the interpreter's
    teardown: there, gloo's threads still holding work from DTensor's collectives can abort the
    process (a rare SIGABRT after everything has passed, seen with torch 2.14's gloo). A worker
    that raised must not call it: exiting with 0 would hide the failure."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
