// Flush-to-zero and denormals-are-zero for the CPU build's threads. torch.set_flush_denormal sets only the calling
// thread, and late in training, gradients and optimizer moments decaying into denormals (~100x slower arithmetic
// on x86) made lego hash-grid steps 2x slower; this sets every thread of the OpenMP pool (the one torch's intra-op
// ops and the kernels share).
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "common/kernels.h"

namespace fields {
namespace cpu {

bool flush_denormals(bool on) {
#if defined(__x86_64__) || defined(__i386__)
  const unsigned int bits = 0x8040;  // MXCSR FTZ (bit 15) | DAZ (bit 6)
  const bool was = (_mm_getcsr() & bits) == bits;
#pragma omp parallel  // the calling thread is one of the team
  _mm_setcsr(on ? (_mm_getcsr() | bits) : (_mm_getcsr() & ~bits));
  return was;
#else
  (void)on;
  return false;
#endif
}

}  // namespace cpu
}  // namespace fields
