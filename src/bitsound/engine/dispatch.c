/* dispatch.c: kernel tables per instruction set and the run-time choice among them.
 *
 *   "reference"        plain bit-at-a-time reference of every binary op (kernels_ref.c)
 *   "scalar"           portable C: blocked structure, __builtin_popcountll; the fused bit-sliced
 *                      form on 64-bit rows
 *   "avx2"             AVX2 + POPCNT (x86-64); large binary convs run bit-serial, stride-1 ones with
 *                      bit output in the fused bit-sliced form on 256-bit rows
 *   "scalar-bitserial" the bit-serial algorithm in portable C (tests only)
 *   "avx512"           AVX-512F/VL + VPOPCNTDQ (x86-64): vpopcntq for small convs, the bit-serial
 *                      kernel with vpternlogq full adders for large ones, the fused bit-sliced
 *                      form on 512-bit rows
 *   "avx512-emulated"  the avx512 kernels' sources on stand-ins for the AVX-512 instructions
 *                      (plain C / AVX2; tests only)
 *   "auto"             the fastest one this CPU supports
 */
#include <string.h>

#include "bsnn.h"

/* cost models (bs_kernels.word_cost, slice_cost) fitted to one-thread timings on an AMD EPYC (Zen 4/5),
 * e.g. avx512 word-parallel 1.3 ns a pixel and channel at K = 288, 2.7 at K = 4608; slice 114 ns a
 * block of 512 positions and channel at K = 288, 850 at K = 4608 (so 128 positions of a 512 -> 512
 * layer stay word-parallel there, and 256 of a 16 -> 32 one go slice). Only their ratios matter. */
static const bs_kernels K_REF = {"reference", bs_xor_popcount_scalar, bs_pack_ref, bs_bits_out_scalar, 1, NULL,
                                  NULL, NULL, 0, {1, 1}, {1, 1}, 0};
static const bs_kernels K_SCALAR_BS = {"scalar-bitserial", bs_xor_popcount_scalar, bs_pack_scalar,
                                       bs_bits_out_scalar, 0, bs_bitserial_scalar, bs_slice_planes_scalar,
                                       bs_bitslice_scalar, 1, {2.0f, 2.2f}, {50, 0.19f}, 1};
static const bs_kernels K_SCALAR = {"scalar", bs_xor_popcount_scalar, bs_pack_scalar, bs_bits_out_scalar, 0, NULL,
                                     bs_slice_planes_scalar, bs_bitslice_scalar, 1, {2.0f, 2.2f}, {50, 0.19f}, 0};
#ifdef BS_X86
static const bs_kernels K_AVX2 = {"avx2", bs_xor_popcount_avx2, bs_pack_avx2, bs_bits_out_avx2, 0, bs_bitserial_avx2,
                                  bs_slice_planes_avx2, bs_bitslice_avx2, 4, {1.76f, 0.117f}, {40, 0.2f}, 1};
static const bs_kernels K_AVX512 = {"avx512", bs_xor_popcount_avx512, bs_pack_avx2, bs_bits_out_avx2, 0,
                                    bs_bitserial_avx512, bs_slice_planes_avx512, bs_bitslice_avx512, 8,
                                    {1.1f, 0.019f}, {60, 0.18f}, 0};
static const bs_kernels K_AVX512EMU = {"avx512-emulated", bs_xor_popcount_avx512emu, bs_pack_scalar,
                                       bs_bits_out_scalar, 0, bs_bitserial_avx512emu, bs_slice_planes_avx512emu,
                                       bs_bitslice_avx512emu, 8, {1.1f, 0.019f}, {60, 0.18f}, 0};
#endif

int bs_isa_available(const char *isa) {
    if (!isa) return 0;
    if (!strcmp(isa, "reference") || !strcmp(isa, "scalar") || !strcmp(isa, "scalar-bitserial")) return 1;
#ifdef BS_X86
    __builtin_cpu_init();
    /* the emulated AVX-512 kernels: plain C for the word-parallel one, AVX2 for the bit-serial one */
    if (!strcmp(isa, "avx512-emulated")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    if (!strcmp(isa, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    if (!strcmp(isa, "avx512"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
               __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vpopcntdq");
#endif
    return 0;
}

const char *bs_isa_auto(void) {
    if (bs_isa_available("avx512")) return "avx512";
    if (bs_isa_available("avx2")) return "avx2";
    return "scalar";
}

const bs_kernels *bs_kernels_get(const char *isa, int *status) {
    *status = BS_OK;
    if (!isa || !strcmp(isa, "auto")) isa = bs_isa_auto();
    if (!strcmp(isa, "reference")) return &K_REF;
    if (!strcmp(isa, "scalar")) return &K_SCALAR;
    if (!strcmp(isa, "scalar-bitserial")) return &K_SCALAR_BS;
#ifdef BS_X86
    if (!strcmp(isa, "avx2") || !strcmp(isa, "avx512") || !strcmp(isa, "avx512-emulated")) {
        if (!bs_isa_available(isa)) {
            *status = BS_ERR_ISA;
            return NULL;
        }
        return !strcmp(isa, "avx2") ? &K_AVX2 : !strcmp(isa, "avx512") ? &K_AVX512 : &K_AVX512EMU;
    }
#endif
    *status = (!strcmp(isa, "avx2") || !strcmp(isa, "avx512") || !strcmp(isa, "avx512-emulated")) ? BS_ERR_ISA
                                                                                                 : BS_ERR_ARG;
    return NULL;
}
