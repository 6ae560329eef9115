// Subnormal floats flushed to zero on the CPU (include/barecnn/cpu_ops.h, FlushSubnormals):
// MXCSR's FTZ bit (a result too small for a normal float becomes zero) and DAZ bit (a subnormal
// operand is read as zero), the modes PyTorch's set_flush_denormal(True) and oneDNN use. Without
// them an x86 core takes a microcode assist of ~100 cycles on each subnormal operand or result:
// a net whose momentum buffers decay into the subnormal range slows down tenfold (docs/MATH.md,
// "Subnormal numbers").
//
// MXCSR is per thread. The scope sets it on the calling thread and, through one parallel region,
// on every thread of the OpenMP team the ops will use (libgomp keeps the same threads for later
// regions of the same size; threads it creates later copy the creating thread's MXCSR).
#include <omp.h>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "barecnn/cpu_ops.h"

namespace barecnn::cpu {

#if defined(__SSE2__)
static constexpr unsigned kFtzDaz = 0x8000u | 0x0040u;  // FTZ (bit 15), DAZ (bit 6)

bool flushes_subnormals() { return (_mm_getcsr() & kFtzDaz) == kFtzDaz; }

FlushSubnormals::FlushSubnormals() : saved_(_mm_getcsr()) {
  const unsigned on = saved_ | kFtzDaz;
  _mm_setcsr(on);
#pragma omp parallel
  _mm_setcsr(on);
}

FlushSubnormals::~FlushSubnormals() {
  const unsigned back = saved_;
  _mm_setcsr(back);
#pragma omp parallel
  _mm_setcsr(back);
}
#else
bool flushes_subnormals() { return false; }
FlushSubnormals::FlushSubnormals() : saved_(0) {}
FlushSubnormals::~FlushSubnormals() = default;
#endif

}  // namespace barecnn::cpu
