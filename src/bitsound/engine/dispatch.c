/* dispatch.c: kernel tables per instruction set and the run-time choice among them.
 *
 *   "reference"        plain bit-at-a-time reference of every binary op (kernels_ref.c)
 *   "scalar"           portable C: blocked structure, __builtin_popcountll
 *   "avx2"             AVX2 + POPCNT (x86-64); large binary convs run bit-serial
 *   "scalar-bitserial" the bit-serial algorithm in portable C (tests only)
 *   "avx512"           AVX-512F/VL + VPOPCNTDQ (x86-64): vpopcntq for small convs, the bit-serial
 *                      kernel with vpternlogq full adders for large ones
 *   "avx512-emulated"  the avx512 kernels' sources on stand-ins for the AVX-512 instructions
 *                      (plain C / AVX2; tests only)
 *   "auto"             the fastest one this CPU supports
 */
#include <string.h>

#include "bsnn.h"

static const bs_kernels K_REF = {"reference", bs_xor_popcount_scalar, bs_pack_ref, bs_bits_out_scalar, 1, NULL};
static const bs_kernels K_SCALAR_BS = {"scalar-bitserial", bs_xor_popcount_scalar, bs_pack_scalar,
                                        bs_bits_out_scalar, 0, bs_bitserial_scalar};
static const bs_kernels K_SCALAR = {"scalar", bs_xor_popcount_scalar, bs_pack_scalar, bs_bits_out_scalar, 0, NULL};
#ifdef BS_X86
static const bs_kernels K_AVX2 = {"avx2", bs_xor_popcount_avx2, bs_pack_avx2, bs_bits_out_avx2, 0, bs_bitserial_avx2};
static const bs_kernels K_AVX512 = {"avx512", bs_xor_popcount_avx512, bs_pack_avx2, bs_bits_out_avx2, 0,
                                    bs_bitserial_avx512};
static const bs_kernels K_AVX512EMU = {"avx512-emulated", bs_xor_popcount_avx512emu, bs_pack_scalar,
                                       bs_bits_out_scalar, 0, bs_bitserial_avx512emu};
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
