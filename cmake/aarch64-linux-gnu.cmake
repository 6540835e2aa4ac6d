# Cross-builds the torch-free C++ tests for aarch64 Linux and runs them under user-mode QEMU, so an
# x86 machine checks the NEON path (Debian: g++-aarch64-linux-gnu qemu-user):
#
#   cmake -S . -B build/aarch64 --toolchain cmake/aarch64-linux-gnu.cmake
#   cmake --build build/aarch64 && ctest --test-dir build/aarch64
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# ctest runs every test executable through this; -L points QEMU at the aarch64 C++ runtime.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
