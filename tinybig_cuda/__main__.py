"""`python -m tinybig_cuda`: how this installation was built and where its op library is."""

from . import _C, _library


def main():
    info = _library.build_info
    print(f"tinybig_cuda, built against torch {info.TORCH_VERSION}")
    print(f"  op library:   {_library.OP_LIBRARY_PATH}")
    print("                (load it without this package: torch.ops.load_library(<that path>))")
    cuda = f"yes, for {info.CUDA_ARCH_LIST}" if info.CUDA_KERNELS else "no"
    print(f"  CUDA kernels: {cuda} ({info.CUDA_REASON})")
    print(f"  CPU paths this CPU runs: {', '.join(_C.supported_cpu_isas())} (active: {_C.cpu_isa()})")
    print("  build summary:")
    for line in info.SUMMARY:
        print(f"    {line}")


if __name__ == "__main__":
    main()
