// 2-D convolution and its two gradients on CPU through oneDNN, as XLA FFI handlers.
//
// Layouts are XLA's for flax convolutions: activations NHWC, kernel HWIO (row-major). oneDNN
// runs on NHWC activations directly; the kernel is reordered per call into the blocked layout the
// chosen implementation prefers (a few hundred KB, cheap next to the convolution), and the kernel
// gradient is reordered back to HWIO. Built by msjax/kernels/onednn.py on first use.
//
// Attributes of every handler: strides, padding (low / high per spatial axis; never negative)
// and kernel dilation (1 = none) as int64.

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  memory::dims x, w, y, strides, pad_lo, pad_hi, dilation;  // oneDNN order: NCHW / OIHW
};

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  Geometry g;
  g.x = {x[0], x[3], x[1], x[2]};
  g.w = {w[3], w[2], w[0], w[1]};
  g.y = {y[0], y[3], y[1], y[2]};
  g.strides = {sh, sw};
  g.pad_lo = {pt, pl};
  g.pad_hi = {pb, pr};
  g.dilation = {dh - 1, dw - 1};  // oneDNN counts the gaps
  return g;
}

std::string Key(const char* kind, const Geometry& g) {
  std::ostringstream s;
  s << kind;
  for (const auto* d : {&g.x, &g.w, &g.y, &g.strides, &g.pad_lo, &g.pad_hi, &g.dilation})
    for (auto v : *d) s << ',' << v;
  return s.str();
}

memory::desc Activations(const memory::dims& d) { return memory::desc(d, dt::f32, tag::nhwc); }
memory::desc UserKernel(const memory::dims& d) { return memory::desc(d, dt::f32, tag::hwio); }
memory::desc AnyKernel(const memory::dims& d) { return memory::desc(d, dt::f32, tag::any); }

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per call: safe to run concurrently
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Activations(g.x), AnyKernel(g.w), Activations(g.y), g.strides, g.dilation, g.pad_lo,
      g.pad_hi, UserScratchpad());
}

// Both gradients: (x, kernel, y) descriptors in the same order, hinted by the forward.
template <class PrimitiveDesc>
PrimitiveDesc BackwardDesc(const Geometry& g) {
  return PrimitiveDesc(Engine(), dnnl::algorithm::convolution_direct, Activations(g.x),
                       AnyKernel(g.w), Activations(g.y), g.strides, g.dilation, g.pad_lo,
                       g.pad_hi, ForwardDesc(g), UserScratchpad());
}

// A primitive, the kernel-layout reorder around it and the sizes it needs, built once per shape.
struct Plan {
  dnnl::primitive conv;
  dnnl::reorder kernel_reorder;
  memory::desc kernel_desc, scratch_desc;
};

std::mutex plans_mutex;
std::unordered_map<std::string, std::shared_ptr<Plan>> plans;

template <class Build>
std::shared_ptr<Plan> GetPlan(const std::string& key, Build build) {
  {
    std::lock_guard<std::mutex> lock(plans_mutex);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
  }
  auto plan = std::make_shared<Plan>(build());
  std::lock_guard<std::mutex> lock(plans_mutex);
  return plans.emplace(key, plan).first->second;
}

template <class Body>
ffi::Error Guarded(Body body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
}

memory Scratch(const memory::desc& d) { return memory(d, Engine()); }

// The kernel is an input of the forward and input-gradient convolutions, the output of the
// kernel gradient.
enum class KernelIs { kInput, kOutput };

Plan MakePlan(dnnl::primitive conv, const memory::desc& kernel_desc,
              const memory::desc& scratch_desc, const Geometry& g, KernelIs role) {
  memory user(UserKernel(g.w), Engine()), ours(kernel_desc, Engine());
  auto reorder = role == KernelIs::kInput ? dnnl::reorder(user, ours) : dnnl::reorder(ours, user);
  return Plan{conv, reorder, kernel_desc, scratch_desc};
}

// Runs the plan on two activation tensors and the kernel at `kernel_data` (HWIO).
void Execute(const Plan& plan, const Geometry& g, KernelIs role, float* kernel_data,
             std::initializer_list<std::pair<const int, memory>> activations) {
  dnnl::stream stream(Engine());
  memory user(UserKernel(g.w), Engine(), kernel_data), kernel = Scratch(plan.kernel_desc);
  std::unordered_map<int, memory> args(activations);
  args[role == KernelIs::kInput ? DNNL_ARG_WEIGHTS : DNNL_ARG_DIFF_WEIGHTS] = kernel;
  args[DNNL_ARG_SCRATCHPAD] = Scratch(plan.scratch_desc);
  if (role == KernelIs::kInput) plan.kernel_reorder.execute(stream, user, kernel);
  plan.conv.execute(stream, args);
  if (role == KernelIs::kOutput) plan.kernel_reorder.execute(stream, kernel, user);
  stream.wait();
}

memory Tensor(const memory::dims& d, const float* data) {
  return memory(Activations(d), Engine(), const_cast<float*>(data));
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  return Guarded([&] {
    Geometry g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl,
                              pr, dh, dw);
    auto plan = GetPlan(Key("fwd", g), [&] {
      auto pd = ForwardDesc(g);
      return MakePlan(dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc(), g,
                      KernelIs::kInput);
    });
    Execute(*plan, g, KernelIs::kInput, w.typed_data(),
            {{DNNL_ARG_SRC, Tensor(g.x, x.typed_data())},
             {DNNL_ARG_DST, Tensor(g.y, y->typed_data())}});
  });
}

// dx from dy and the kernel. x's shape is the result's.
ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  return Guarded([&] {
    Geometry g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb,
                              pl, pr, dh, dw);
    auto plan = GetPlan(Key("bwd_data", g), [&] {
      auto pd = BackwardDesc<dnnl::convolution_backward_data::primitive_desc>(g);
      return MakePlan(dnnl::convolution_backward_data(pd), pd.weights_desc(),
                      pd.scratchpad_desc(), g, KernelIs::kInput);
    });
    Execute(*plan, g, KernelIs::kInput, w.typed_data(),
            {{DNNL_ARG_DIFF_DST, Tensor(g.y, dy.typed_data())},
             {DNNL_ARG_DIFF_SRC, Tensor(g.x, dx->typed_data())}});
  });
}

// The kernel gradient from x and dy, written in HWIO.
ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dw_out, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  return Guarded([&] {
    Geometry g = MakeGeometry(x.dimensions(), dw_out->dimensions(), dy.dimensions(), sh, sw, pt,
                              pb, pl, pr, dh, dw);
    auto plan = GetPlan(Key("bwd_weights", g), [&] {
      auto pd = BackwardDesc<dnnl::convolution_backward_weights::primitive_desc>(g);
      return MakePlan(dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(),
                      pd.scratchpad_desc(), g, KernelIs::kOutput);
    });
    Execute(*plan, g, KernelIs::kOutput, dw_out->typed_data(),
            {{DNNL_ARG_SRC, Tensor(g.x, x.typed_data())},
             {DNNL_ARG_DIFF_DST, Tensor(g.y, dy.typed_data())}});
  });
}

}  // namespace

#define MSJAX_CONV_ATTRS                                                                      \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")              \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")        \
      .Attr<int64_t>("dilation_h").Attr<int64_t>("dilation_w")

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsjaxConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() MSJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MsjaxConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() MSJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MsjaxConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() MSJAX_CONV_ATTRS);
