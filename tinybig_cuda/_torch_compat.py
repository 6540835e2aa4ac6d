"""The differences between the torch releases tinybig_cuda runs on (2.2 to the newest), in one place.

Each name here is torch's own where this torch has it, and the older spelling of the same thing
where it does not. A feature that an old torch cannot give at all (DTensor rules) says so through
`require`, naming the release that has it. The C++ half is csrc/ops/torch_compat.h."""

import torch

TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])

# torch.library.register_fake arrived in 2.4; impl_abstract is the same registration before it.
register_fake = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract

# torch.compiler.is_compiling (2.3) and is_dynamo_compiling (2.4); torch._utils.is_compiling is
# the function torch.compile treats as True while tracing in the releases before them.
is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._utils.is_compiling
is_dynamo_compiling = getattr(torch.compiler, "is_dynamo_compiling", None) or is_compiling


def default_device():
    """The device factory functions use now, `with torch.device(...)` included: what an empty
    tensor is made on (torch.get_default_device exists from 2.3 but, in 2.6, misses the context
    manager)."""
    return torch.empty(0).device


# torch.compile and torch.export of the package need torch 2.4: torch refuses Python 3.12 before it,
# and the TorchDynamo of 2.2 and 2.3 cannot trace the entry points' argument checks.
COMPILE_SUPPORTED = TORCH_VERSION >= (2, 4)

# What each feature needs that older releases lack: (release, the API it needs).
DTENSOR = ((2, 5), "torch.library.register_torch_dispatch and torch.distributed.tensor")


def require(feature, needs):
    """Raises a RuntimeError naming `feature` and the torch release that has it, unless this torch does."""
    release, api = needs
    if TORCH_VERSION < release:
        raise RuntimeError(
            f"tinybig_cuda: {feature} needs torch {release[0]}.{release[1]} or newer ({api}), "
            f"but this is torch {torch.__version__}"
        )
