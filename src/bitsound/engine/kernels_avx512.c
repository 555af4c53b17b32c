/* kernels_avx512.c: AVX-512 path with VPOPCNTDQ (vpopcntq counts 8 words per instruction), so
 * an output costs xor + vpopcntq + vpaddq per 512 bits. Dispatched only when the CPU reports
 * avx512f and avx512vpopcntdq. Two patches x four output channels per step: each weight vector
 * load serves two patches and each patch load four channels. kwords is a multiple of 4; a
 * trailing half vector is read with a masked load.
 *
 * The vector operations are spelled through the V* macros below so that the same source also
 * compiles with BS_AVX512_EMULATE (kernels_avx512_emu.c): plain C stand-ins for the seven
 * intrinsics, which lets the tests check this kernel's logic on machines without AVX-512.
 */
#include "bsnn.h"

#ifdef BS_X86
#include <string.h>

#ifdef BS_AVX512_EMULATE
typedef struct { uint64_t q[8]; } v512;
#define T_512
static inline v512 VZERO(void) { v512 r; memset(&r, 0, sizeof r); return r; }
static inline v512 VLOAD(const uint64_t *p) { v512 r; memcpy(r.q, p, 64); return r; }
static inline v512 VLOAD_LO4(const uint64_t *p) { v512 r = VZERO(); memcpy(r.q, p, 32); return r; }
static inline v512 VXOR(v512 a, v512 b) { for (int i = 0; i < 8; i++) a.q[i] ^= b.q[i]; return a; }
static inline v512 VPOPCNT(v512 a) { for (int i = 0; i < 8; i++) a.q[i] = (uint64_t)__builtin_popcountll(a.q[i]); return a; }
static inline v512 VADD(v512 a, v512 b) { for (int i = 0; i < 8; i++) a.q[i] += b.q[i]; return a; }
static inline int64_t VSUM(v512 a) { int64_t s = 0; for (int i = 0; i < 8; i++) s += (int64_t)a.q[i]; return s; }
#define XOR_POPCOUNT_512 bs_xor_popcount_avx512emu
#else
#include <immintrin.h>
typedef __m512i v512;
#define T_512 __attribute__((target("avx512f,avx512vpopcntdq,popcnt")))
#define VZERO() _mm512_setzero_si512()
#define VLOAD(p) _mm512_loadu_si512((const void *)(p))
#define VLOAD_LO4(p) _mm512_maskz_loadu_epi64((__mmask8)0x0F, (const void *)(p))
#define VXOR(a, b) _mm512_xor_si512(a, b)
#define VPOPCNT(a) _mm512_popcnt_epi64(a)
#define VADD(a, b) _mm512_add_epi64(a, b)
#define VSUM(a) ((int64_t)_mm512_reduce_add_epi64(a))
#define XOR_POPCOUNT_512 bs_xor_popcount_avx512
#endif

#define OBLOCK 64

#define STEP(LOADER, off)                                                                          \
    do {                                                                                           \
        v512 xa = LOADER(xa_p + (off)), xb = LOADER(xb_p + (off));                                 \
        v512 wv;                                                                                   \
        wv = LOADER(w0 + (off)); a0 = VADD(a0, VPOPCNT(VXOR(xa, wv))); b0 = VADD(b0, VPOPCNT(VXOR(xb, wv))); \
        wv = LOADER(w1 + (off)); a1 = VADD(a1, VPOPCNT(VXOR(xa, wv))); b1 = VADD(b1, VPOPCNT(VXOR(xb, wv))); \
        wv = LOADER(w2 + (off)); a2 = VADD(a2, VPOPCNT(VXOR(xa, wv))); b2 = VADD(b2, VPOPCNT(VXOR(xb, wv))); \
        wv = LOADER(w3 + (off)); a3 = VADD(a3, VPOPCNT(VXOR(xa, wv))); b3 = VADD(b3, VPOPCNT(VXOR(xb, wv))); \
    } while (0)

/* two patches (xa_p, xb_p; may be the same pointer) x four channels */
T_512 static void dot2x4(const uint64_t *xa_p, const uint64_t *xb_p, const uint64_t *w, int kwords,
                         int32_t *outa, int32_t *outb) {
    const uint64_t *w0 = w, *w1 = w + kwords, *w2 = w + 2 * (size_t)kwords, *w3 = w + 3 * (size_t)kwords;
    v512 a0 = VZERO(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int k = 0;
    for (; k + 8 <= kwords; k += 8) STEP(VLOAD, k);
    if (k < kwords) STEP(VLOAD_LO4, k); /* kwords % 8 == 4 */
    outa[0] = (int32_t)VSUM(a0); outa[1] = (int32_t)VSUM(a1); outa[2] = (int32_t)VSUM(a2); outa[3] = (int32_t)VSUM(a3);
    outb[0] = (int32_t)VSUM(b0); outb[1] = (int32_t)VSUM(b1); outb[2] = (int32_t)VSUM(b2); outb[3] = (int32_t)VSUM(b3);
}

T_512 static int32_t dot1(const uint64_t *x, const uint64_t *w, int kwords) {
    v512 a = VZERO();
    int k = 0;
    for (; k + 8 <= kwords; k += 8) a = VADD(a, VPOPCNT(VXOR(VLOAD(x + k), VLOAD(w + k))));
    if (k < kwords) a = VADD(a, VPOPCNT(VXOR(VLOAD_LO4(x + k), VLOAD_LO4(w + k))));
    return (int32_t)VSUM(a);
}

T_512 void XOR_POPCOUNT_512(const uint64_t *patches, int n, const uint64_t *w, int cout, int kwords,
                            int32_t *pop) {
    for (int o0 = 0; o0 < cout; o0 += OBLOCK) {
        int o1 = o0 + OBLOCK < cout ? o0 + OBLOCK : cout;
        for (int p = 0; p < n; p += 2) {
            const uint64_t *xa = patches + (size_t)p * kwords;
            int two = p + 1 < n;
            const uint64_t *xb = two ? xa + kwords : xa;
            int32_t *da = pop + (size_t)p * cout;
            int32_t *db = two ? da + cout : da; /* written only when two */
            int o = o0;
            for (; o + 4 <= o1; o += 4) {
                int32_t ra[4], rb[4];
                dot2x4(xa, xb, w + (size_t)o * kwords, kwords, ra, rb);
                for (int j = 0; j < 4; j++) {
                    da[o + j] = ra[j];
                    if (two) db[o + j] = rb[j];
                }
            }
            for (; o < o1; o++) {
                da[o] = dot1(xa, w + (size_t)o * kwords, kwords);
                if (two) db[o] = dot1(xb, w + (size_t)o * kwords, kwords);
            }
        }
    }
}

/* ---- the fused bit-sliced form (bitslice_body.h) on 512-bit rows: blocks of 512 positions, the
 * full adder in two vpternlogq (0x96: a ^ b ^ c, 0xE8: majority), the masked funnel shift's
 * (a | b) & m in one (0xA8), a bit select in one (0xCA) ---- */
#define VW 8
#define BSL_TREE16 1 /* 32 vector registers: the Wallace-tree step of 16 rows (bitslice_body.h) */
#ifdef BS_AVX512_EMULATE
/* vpternlogq from its truth table (result bit = imm8[a << 2 | b << 1 | c]), so that the tests check
 * the immediates on machines without AVX-512 */
static inline v512 ternlog_emu(v512 a, v512 b, v512 c, int imm) {
    v512 r = VZERO();
    for (int i = 0; i < 8; i++)
        if ((imm >> i) & 1)
            for (int w = 0; w < 8; w++)
                r.q[w] |= ((i & 4) ? a.q[w] : ~a.q[w]) & ((i & 2) ? b.q[w] : ~b.q[w]) & ((i & 1) ? c.q[w] : ~c.q[w]);
    return r;
}
static inline v512 v_and(v512 a, v512 b) { for (int i = 0; i < 8; i++) a.q[i] &= b.q[i]; return a; }
static inline v512 v_or(v512 a, v512 b) { for (int i = 0; i < 8; i++) a.q[i] |= b.q[i]; return a; }
static inline v512 v_set1(uint64_t u) { v512 r; for (int i = 0; i < 8; i++) r.q[i] = u; return r; }
static inline v512 v_srl(v512 a, int n) { for (int i = 0; i < 8; i++) a.q[i] = n >= 64 ? 0 : a.q[i] >> n; return a; }
static inline v512 v_sll(v512 a, int n) { for (int i = 0; i < 8; i++) a.q[i] = n >= 64 ? 0 : a.q[i] << n; return a; }
static inline int v_nonzero(v512 a) { uint64_t o = 0; for (int i = 0; i < 8; i++) o |= a.q[i]; return o != 0; }
static inline void v_store(uint64_t *p, v512 v) { memcpy(p, v.q, 64); }
#define BSV v512
#define BSL_ATTR
#define BSL(n) bsl512emu_##n
#define BSL_PLANES bs_slice_planes_avx512emu
#define BSL_BLOCK bs_bitslice_avx512emu
#define V_LOAD(p) VLOAD(p)
#define V_LOADU(p) VLOAD(p)
#define V_STORE(p, v) v_store(p, v)
#define V_STOREU(p, v) v_store(p, v)
#define V_ZERO() VZERO()
#define V_ONES() v_set1(~0ull)
#define V_SET1(u) v_set1(u)
#define V_XOR(a, b) VXOR(a, b)
#define V_AND(a, b) v_and(a, b)
#define V_OR(a, b) v_or(a, b)
#define V_NOT(a) ternlog_emu(a, a, a, 0x55)
#define V_XOR3(a, b, c) ternlog_emu(a, b, c, 0x96)
#define V_MAJ(a, b, c) ternlog_emu(a, b, c, 0xE8)
#define V_ORAND(a, b, m) ternlog_emu(a, b, m, 0xA8)
#define V_SELECT(m, a, b) ternlog_emu(m, a, b, 0xCA)
#define V_SRLV(v, n) v_srl(v, n)
#define V_SLLV(v, n) v_sll(v, n)
#define V_SRLI(v, s) v_srl(v, s)
#define V_SLLI(v, s) v_sll(v, s)
#define V_NONZERO(v) v_nonzero(v)
#else
#define BSV __m512i
#define BSL_ATTR T_512
#define BSL(n) bsl512_##n
#define BSL_PLANES bs_slice_planes_avx512
#define BSL_BLOCK bs_bitslice_avx512
#define V_LOAD(p) _mm512_load_si512((const void *)(p))
#define V_LOADU(p) _mm512_loadu_si512((const void *)(p))
#define V_STORE(p, v) _mm512_store_si512((void *)(p), v)
#define V_STOREU(p, v) _mm512_storeu_si512((void *)(p), v)
#define V_ZERO() _mm512_setzero_si512()
#define V_ONES() _mm512_set1_epi64(-1)
#define V_SET1(u) _mm512_set1_epi64((long long)(u))
#define V_XOR(a, b) _mm512_xor_si512(a, b)
#define V_AND(a, b) _mm512_and_si512(a, b)
#define V_OR(a, b) _mm512_or_si512(a, b)
#define V_NOT(a) _mm512_ternarylogic_epi64(a, a, a, 0x55)
#define V_XOR3(a, b, c) _mm512_ternarylogic_epi64(a, b, c, 0x96)
#define V_MAJ(a, b, c) _mm512_ternarylogic_epi64(a, b, c, 0xE8)
#define V_ORAND(a, b, m) _mm512_ternarylogic_epi64(a, b, m, 0xA8)
#define V_SELECT(m, a, b) _mm512_ternarylogic_epi64(m, a, b, 0xCA)
#define V_SRLV(v, n) _mm512_srl_epi64(v, _mm_cvtsi32_si128(n))
#define V_SLLV(v, n) _mm512_sll_epi64(v, _mm_cvtsi32_si128(n))
#define V_SRLI(v, s) _mm512_srli_epi64(v, s)
#define V_SLLI(v, s) _mm512_slli_epi64(v, s)
#define V_NONZERO(v) (_mm512_test_epi64_mask(v, v) != 0)
#endif
#include "bitslice_body.h"
#undef BSL_TREE16
#undef VW
#undef BSV
#undef BSL_ATTR
#undef BSL
#undef BSL_PLANES
#undef BSL_BLOCK

#ifndef BS_AVX512_EMULATE
/* peak: xor + vpopcntq + vpaddq on L1-resident data, 4 independent accumulators */
enum { PN = 512 };
static uint64_t qa[PN] __attribute__((aligned(64))), qb[PN] __attribute__((aligned(64)));

T_512 static uint64_t pass512(int reps) {
    v512 a0 = VZERO(), a1 = a0, a2 = a0, a3 = a0;
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < PN; i += 32) {
            a0 = VADD(a0, VPOPCNT(VXOR(VLOAD(qa + i), VLOAD(qb + i))));
            a1 = VADD(a1, VPOPCNT(VXOR(VLOAD(qa + i + 8), VLOAD(qb + i + 8))));
            a2 = VADD(a2, VPOPCNT(VXOR(VLOAD(qa + i + 16), VLOAD(qb + i + 16))));
            a3 = VADD(a3, VPOPCNT(VXOR(VLOAD(qa + i + 24), VLOAD(qb + i + 24))));
        }
    return (uint64_t)(VSUM(a0) + VSUM(a1) + VSUM(a2) + VSUM(a3));
}

double bs_peak_avx512(double seconds) {
    for (int i = 0; i < PN; i++) {
        qa[i] = (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
        qb[i] = ~((uint64_t)(i + 7) * 0xC2B2AE3D27D4EB4Full);
    }
    volatile uint64_t sink = pass512(10);
    double best = 0, t_end = bs_now() + seconds;
    do {
        double t0 = bs_now();
        sink += pass512(200);
        double rate = 200.0 * PN * 64 / (bs_now() - t0);
        if (rate > best) best = rate;
    } while (bs_now() < t_end);
    (void)sink;
    return best;
}
#endif

#endif /* BS_X86 */
