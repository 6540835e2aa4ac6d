// The differences between the torch versions this package builds against (2.2 to the newest),
// in one place, so that no kernel or registration carries a version test of its own. Each shim
// asks torch's own types rather than its version number, so it stays right whichever release
// changed the thing it bridges.
#pragma once

#include <c10/core/Allocator.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function.h>

#include <cstring>

#include <memory>
#include <type_traits>
#include <utility>

namespace tinybig_cuda {

template <typename Library, typename = void>
struct has_set_python_module : std::false_type {};
template <typename Library>
struct has_set_python_module<
    Library, std::void_t<decltype(std::declval<Library&>().set_python_module(""))>> : std::true_type {};

// A new autograd node, held the way this torch holds nodes: std::shared_ptr up to the releases
// whose Edge::function became a c10::intrusive_ptr (for them, Node derives from intrusive_ptr_target).
template <typename NodeType>
auto make_autograd_node() {
  using NodePointer = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<NodePointer, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<NodeType>();
  } else {
    return c10::make_intrusive<NodeType>();
  }
}

// Names the Python module that registers the fake kernels of the ops defined after this call.
// torch 2.2 and 2.3 run a Python fake kernel of an op defined in C++ only if the library named that
// module (impl_abstract_pystub); later releases (set_python_module) need no name, and an op library
// loaded without Python there must not send torch looking for the package.
template <typename Library>
void name_fake_kernel_module(Library& library, const char* python_module) {
  if constexpr (!has_set_python_module<Library>::value) {
    library.impl_abstract_pystub(python_module);
  }
}

// An allocator's base class for every torch: up to 2.2, c10::Allocator declares allocate() const
// and has no copy_data; later releases declare allocate() non-const and copy_data pure virtual.
// Both shapes are declared here (neither marked override: each torch overrides one of them) and
// forwarded to allocate_memory.
class AllocatorBase : public c10::Allocator {
 public:
  virtual c10::DataPtr allocate_memory(size_t bytes) = 0;

  c10::DataPtr allocate(size_t bytes) { return allocate_memory(bytes); }
  c10::DataPtr allocate(size_t bytes) const { return const_cast<AllocatorBase*>(this)->allocate_memory(bytes); }
  void copy_data(void* destination, const void* source, std::size_t count) const {
    std::memcpy(destination, source, count);
  }
};

// A torch::autograd::Function whose backward compiled autograd may trace: it only calls ops through
// the dispatcher on its saved tensors, p and integers. Compiled autograd refuses a C++ Function
// without this mark up to torch 2.6 (later releases call an unmarked one opaquely); torch 2.2
// has no such member and ignores it.
template <typename Derived>
struct TraceableFunction : torch::autograd::Function<Derived> {
  static constexpr bool is_traceable = true;
};

}  // namespace tinybig_cuda
