/* kernels_avx512_emu.c: the AVX-512 kernel's source built with plain C stand-ins for its
 * intrinsics (bs_xor_popcount_avx512emu), so the tests check its logic on any machine. */
#define BS_AVX512_EMULATE 1
#include "kernels_avx512.c"
