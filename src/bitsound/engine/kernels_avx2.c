/* kernels_avx2.c: AVX2 path. Compiled everywhere (functions carry target attributes, no -m flags
 * needed); dispatch.c calls them only when the CPU reports AVX2 and POPCNT.
 *
 * xor+popcount: AVX2 has no vector popcount, so each 256-bit xor is counted with the nibble
 * lookup table (vpshufb) into byte counters, which are widened with vpsadbw only when they
 * could overflow (every 31 vectors) and at the end of an output. Three vectors at a time go
 * through a carry-save full adder first (s = a^b^c, carry = majority(a, b, c); popcount(a) +
 * popcount(b) + popcount(c) = popcount(s) + 2 popcount(carry)), which saves a third of the
 * table lookups. Four output channels share each patch load; blocks of 64 output channels keep
 * their weights in L1 while the row's patches stream past.
 */
#include "bsnn.h"

#ifdef BS_X86
#include <immintrin.h>
#include <string.h>

#define T_AVX2 __attribute__((target("avx2,popcnt")))
#define OBLOCK 64
#define SHORT_VECTORS 1 /* dot products of at most this many 256-bit vectors use scalar POPCNT */

T_AVX2 static inline __m256i pc8(__m256i v, __m256i lut, __m256i m) {
    __m256i lo = _mm256_and_si256(v, m);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

T_AVX2 static inline __m256i sad(__m256i v) { return _mm256_sad_epu8(v, _mm256_setzero_si256()); }

T_AVX2 static inline int64_t hsum64(__m256i v) {
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

#define LUT_INIT                                                                                   \
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, \
                                         2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);                         \
    const __m256i m4 = _mm256_set1_epi8(0x0f)

/* one output channel: popcount(x ^ w) over nv 256-bit vectors */
T_AVX2 static int32_t dot1(const uint64_t *x, const uint64_t *w, int nv) {
    LUT_INIT;
    __m256i tot = _mm256_setzero_si256();
    int v = 0;
    while (v < nv) {
        int end = v + 31 < nv ? v + 31 : nv; /* <= 31 vectors: byte counters stay below 256 */
        __m256i acc = _mm256_setzero_si256();
        for (; v < end; v++) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(x + 4 * v));
            __m256i b = _mm256_loadu_si256((const __m256i *)(w + 4 * v));
            acc = _mm256_add_epi8(acc, pc8(_mm256_xor_si256(a, b), lut, m4));
        }
        tot = _mm256_add_epi64(tot, sad(acc));
    }
    return (int32_t)hsum64(tot);
}

/* four output channels sharing the patch loads; full adder over triples of vectors.
 * Byte counters get <= 8 per lookup (twos are counted twice when widened). */
T_AVX2 static void dot4(const uint64_t *x, const uint64_t *w, int kwords, int nv, int32_t *out) {
    LUT_INIT;
    const uint64_t *w0 = w, *w1 = w + kwords, *w2 = w + 2 * (size_t)kwords, *w3 = w + 3 * (size_t)kwords;
    __m256i t0 = _mm256_setzero_si256(), t1 = t0, t2 = t0, t3 = t0;
    int v = 0;
    while (v < nv) {
        /* <= 29 triples (<= 232 per byte) + <= 2 single vectors (<= 16): bytes stay below 256 */
        int end = v + 87 < nv ? v + 87 : nv;
        __m256i o0 = _mm256_setzero_si256(), o1 = o0, o2 = o0, o3 = o0; /* ones */
        __m256i d0 = o0, d1 = o0, d2 = o0, d3 = o0;                     /* twos */
        for (; v + 3 <= end; v += 3) {
            __m256i xa = _mm256_loadu_si256((const __m256i *)(x + 4 * v));
            __m256i xb = _mm256_loadu_si256((const __m256i *)(x + 4 * v + 4));
            __m256i xc = _mm256_loadu_si256((const __m256i *)(x + 4 * v + 8));
#define FA(W, O, D)                                                                              \
    do {                                                                                         \
        __m256i a = _mm256_xor_si256(xa, _mm256_loadu_si256((const __m256i *)(W + 4 * v)));      \
        __m256i b = _mm256_xor_si256(xb, _mm256_loadu_si256((const __m256i *)(W + 4 * v + 4)));  \
        __m256i c = _mm256_xor_si256(xc, _mm256_loadu_si256((const __m256i *)(W + 4 * v + 8)));  \
        __m256i u = _mm256_xor_si256(a, b);                                                      \
        __m256i s = _mm256_xor_si256(u, c);                                                      \
        __m256i cy = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));            \
        O = _mm256_add_epi8(O, pc8(s, lut, m4));                                                 \
        D = _mm256_add_epi8(D, pc8(cy, lut, m4));                                                \
    } while (0)
            FA(w0, o0, d0);
            FA(w1, o1, d1);
            FA(w2, o2, d2);
            FA(w3, o3, d3);
#undef FA
        }
        for (; v < end; v++) {
            __m256i xa = _mm256_loadu_si256((const __m256i *)(x + 4 * v));
            o0 = _mm256_add_epi8(o0, pc8(_mm256_xor_si256(xa, _mm256_loadu_si256((const __m256i *)(w0 + 4 * v))), lut, m4));
            o1 = _mm256_add_epi8(o1, pc8(_mm256_xor_si256(xa, _mm256_loadu_si256((const __m256i *)(w1 + 4 * v))), lut, m4));
            o2 = _mm256_add_epi8(o2, pc8(_mm256_xor_si256(xa, _mm256_loadu_si256((const __m256i *)(w2 + 4 * v))), lut, m4));
            o3 = _mm256_add_epi8(o3, pc8(_mm256_xor_si256(xa, _mm256_loadu_si256((const __m256i *)(w3 + 4 * v))), lut, m4));
        }
        t0 = _mm256_add_epi64(t0, _mm256_add_epi64(sad(o0), _mm256_slli_epi64(sad(d0), 1)));
        t1 = _mm256_add_epi64(t1, _mm256_add_epi64(sad(o1), _mm256_slli_epi64(sad(d1), 1)));
        t2 = _mm256_add_epi64(t2, _mm256_add_epi64(sad(o2), _mm256_slli_epi64(sad(d2), 1)));
        t3 = _mm256_add_epi64(t3, _mm256_add_epi64(sad(o3), _mm256_slli_epi64(sad(d3), 1)));
    }
    /* horizontal sums of the four accumulators at once */
    __m256i a01 = _mm256_add_epi64(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
    __m256i a23 = _mm256_add_epi64(_mm256_unpacklo_epi64(t2, t3), _mm256_unpackhi_epi64(t2, t3));
    __m256i s = _mm256_add_epi64(_mm256_permute2x128_si256(a01, a23, 0x20), _mm256_permute2x128_si256(a01, a23, 0x31));
    int64_t r[4];
    _mm256_storeu_si256((__m256i *)r, s);
    out[0] = (int32_t)r[0];
    out[1] = (int32_t)r[1];
    out[2] = (int32_t)r[2];
    out[3] = (int32_t)r[3];
}

/* short dot products (one or two vectors): scalar POPCNT, no vector reductions to amortize */
T_AVX2 static void short_dots(const uint64_t *patches, int n, const uint64_t *w, int cout, int kwords,
                              int32_t *pop) {
    for (int p = 0; p < n; p++) {
        const uint64_t *x = patches + (size_t)p * kwords;
        int32_t *dst = pop + (size_t)p * cout;
        if (kwords == 4) {
            const uint64_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
            for (int o = 0; o < cout; o++) {
                const uint64_t *wo = w + (size_t)o * 4;
                dst[o] = (int32_t)(_mm_popcnt_u64(x0 ^ wo[0]) + _mm_popcnt_u64(x1 ^ wo[1]) +
                                   _mm_popcnt_u64(x2 ^ wo[2]) + _mm_popcnt_u64(x3 ^ wo[3]));
            }
        } else {
            for (int o = 0; o < cout; o++) {
                const uint64_t *wo = w + (size_t)o * kwords;
                int64_t a = 0, b = 0;
                for (int k = 0; k < kwords; k += 2) {
                    a += (int64_t)_mm_popcnt_u64(x[k] ^ wo[k]);
                    b += (int64_t)_mm_popcnt_u64(x[k + 1] ^ wo[k + 1]);
                }
                dst[o] = (int32_t)(a + b);
            }
        }
    }
}

T_AVX2 void bs_xor_popcount_avx2(const uint64_t *patches, int n, const uint64_t *w, int cout, int kwords,
                                 int32_t *pop) {
    int nv = kwords / 4;
    if (nv <= SHORT_VECTORS) {
        short_dots(patches, n, w, cout, kwords, pop);
        return;
    }
    for (int o0 = 0; o0 < cout; o0 += OBLOCK) {
        int o1 = o0 + OBLOCK < cout ? o0 + OBLOCK : cout;
        for (int p = 0; p < n; p++) {
            const uint64_t *x = patches + (size_t)p * kwords;
            int32_t *dst = pop + (size_t)p * cout;
            int o = o0;
            for (; o + 4 <= o1; o += 4) dot4(x, w + (size_t)o * kwords, kwords, nv, dst + o);
            for (; o < o1; o++) dst[o] = dot1(x, w + (size_t)o * kwords, nv);
        }
    }
}

/* threshold output stage, 8 channels per compare + movemask */
T_AVX2 void bs_bits_out_avx2(const int32_t *pop, int cout, int32_t nvalid, const int32_t *thr, const int32_t *fsign,
                             uint64_t *dst) {
    const __m256i nv = _mm256_set1_epi32(nvalid);
    for (int o0 = 0; o0 < cout; o0 += 64) {
        int n = cout - o0 < 64 ? cout - o0 : 64;
        uint64_t word = 0;
        int b = 0;
        for (; b + 8 <= n; b += 8) {
            int o = o0 + b;
            __m256i p = _mm256_loadu_si256((const __m256i *)(pop + o));
            __m256i d = _mm256_sub_epi32(nv, _mm256_add_epi32(p, p));
            __m256i sd = _mm256_mullo_epi32(d, _mm256_loadu_si256((const __m256i *)(fsign + o)));
            __m256i lt = _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(thr + o)), sd);
            word |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(lt)) << b;
        }
        for (; b < n; b++) {
            int o = o0 + b;
            word |= (uint64_t)(fsign[o] * (nvalid - 2 * pop[o]) < thr[o]) << b;
        }
        dst[o0 / 64] = word;
    }
}


static size_t a64(size_t x) { return (x + 63) / 64 * 64; }

/* bit planes [L][256 bits] (weights 1, 2, 4, ...; L <= 15) -> 256 per-pixel counts (int32).
 * 32 pixels at a time in byte lanes: the plane's 32 bits are spread one per byte (permute +
 * shuffle + compare against the bit masks), planes 0-6 accumulate in one byte counter, planes
 * 7-14 in another (acc = 2 acc + bit, from the top plane down), then both widen to int32. */
T_AVX2 static void planes_to_counts(const __m256i *pl, int L, int32_t *cnt) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bits = _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128,
                                          1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
    for (int c = 0; c < 8; c++) {
        const __m256i which = _mm256_set1_epi32(c);
        __m256i lo = _mm256_setzero_si256(), hi = lo;
        for (int l = L - 1; l >= 0; l--) {
            __m256i v = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(_mm256_load_si256(pl + l), which), spread);
            __m256i m = _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits); /* -1 where the bit is set */
            if (l >= 7)
                hi = _mm256_sub_epi8(_mm256_add_epi8(hi, hi), m);
            else
                lo = _mm256_sub_epi8(_mm256_add_epi8(lo, lo), m);
        }
        __m128i l0 = _mm256_castsi256_si128(lo), l1 = _mm256_extracti128_si256(lo, 1);
        __m128i h0 = _mm256_castsi256_si128(hi), h1 = _mm256_extracti128_si256(hi, 1);
        __m128i ls[4] = {l0, _mm_srli_si128(l0, 8), l1, _mm_srli_si128(l1, 8)};
        __m128i hs[4] = {h0, _mm_srli_si128(h0, 8), h1, _mm_srli_si128(h1, 8)};
        for (int q = 0; q < 4; q++) {
            __m256i v = _mm256_add_epi32(_mm256_cvtepu8_epi32(ls[q]), _mm256_slli_epi32(_mm256_cvtepu8_epi32(hs[q]), 7));
            _mm256_storeu_si256((__m256i *)(cnt + 32 * c + 8 * q), v);
        }
    }
}

/* bs_transpose_patches with the four 64-pixel quarters in the four lanes of a vector: the same
 * 64x64 bit transpose (Hacker's Delight 7-3) on four blocks at once, stored straight as rows of xt */
T_AVX2 static void transpose_patches(const uint64_t *patches, int n, int kw4, uint64_t *xt) {
    __m256i a[64];
    for (int j = 0; j < kw4; j++) {
        for (int i = 0; i < 64; i++) {
            uint64_t v[4];
            for (int q = 0; q < 4; q++) {
                int p = q * 64 + i;
                v[q] = p < n ? patches[(size_t)p * kw4 + j] : 0;
            }
            a[i] = _mm256_setr_epi64x((long long)v[0], (long long)v[1], (long long)v[2], (long long)v[3]);
        }
        uint64_t mm = 0x00000000FFFFFFFFull;
        for (int s = 32; s; s >>= 1, mm ^= mm << s) {
            const __m256i m = _mm256_set1_epi64x((long long)mm);
            for (int k = 0; k < 64; k = ((k | s) + 1) & ~s) {
                __m256i t = _mm256_and_si256(_mm256_xor_si256(_mm256_srli_epi64(a[k], s), a[k | s]), m);
                a[k | s] = _mm256_xor_si256(a[k | s], t);
                a[k] = _mm256_xor_si256(a[k], _mm256_slli_epi64(t, s));
            }
        }
        for (int b = 0; b < 64; b++) _mm256_store_si256((__m256i *)(xt + ((size_t)j * 64 + b) * 4), a[b]);
    }
}

/* pop[p][o0 + j] = n1 + X_p - 2 C or n1 - X_p + 2 C for the counts C = cnt[j][p] of a block of
 * nb <= 8 channels: 8x8 int32 transposes, so that each pixel gets one contiguous store */
T_AVX2 static void store_block(const int32_t *cnt, int o0, int nb, int n, const bs_bitserial *bs,
                               const int32_t *xpop, int32_t *pop, int cout) {
    int p = 0;
    if (nb == 8) {
        const __m256i n1 = _mm256_loadu_si256((const __m256i *)(bs->n1 + o0));
        int32_t sg[8];
        for (int j = 0; j < 8; j++) sg[j] = bs->sel[o0 + j] ? 1 : -1;
        const __m256i sgn = _mm256_loadu_si256((const __m256i *)sg);
        for (; p + 8 <= n; p += 8) {
            __m256i r[8], t[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_si256((const __m256i *)(cnt + (size_t)j * BS_PIXEL_BLOCK + p));
            for (int j = 0; j < 8; j += 2) {
                t[j] = _mm256_unpacklo_epi32(r[j], r[j + 1]);
                t[j + 1] = _mm256_unpackhi_epi32(r[j], r[j + 1]);
            }
            for (int j = 0; j < 8; j += 4) {
                r[j] = _mm256_unpacklo_epi64(t[j], t[j + 2]);
                r[j + 1] = _mm256_unpackhi_epi64(t[j], t[j + 2]);
                r[j + 2] = _mm256_unpacklo_epi64(t[j + 1], t[j + 3]);
                r[j + 3] = _mm256_unpackhi_epi64(t[j + 1], t[j + 3]);
            }
            /* r[0..3]: pixels p+0, p+1, p+2, p+3 (low lanes) and p+4..p+7 (high lanes) of
             * channels 0-3 (r[0..3]) and 4-7 (r[4..7]) */
            for (int j = 0; j < 4; j++) {
                t[j] = _mm256_permute2x128_si256(r[j], r[j + 4], 0x20);     /* pixel p + j */
                t[j + 4] = _mm256_permute2x128_si256(r[j], r[j + 4], 0x31); /* pixel p + 4 + j */
            }
            for (int j = 0; j < 8; j++) {
                __m256i x = _mm256_set1_epi32(xpop[p + j]);
                __m256i v = _mm256_add_epi32(n1, _mm256_sign_epi32(_mm256_sub_epi32(x, _mm256_add_epi32(t[j], t[j])), sgn));
                _mm256_storeu_si256((__m256i *)(pop + (size_t)(p + j) * cout + o0), v);
            }
        }
    }
    for (; p < n; p++)
        for (int j = 0; j < nb; j++) {
            int32_t c = cnt[(size_t)j * BS_PIXEL_BLOCK + p], n1 = bs->n1[o0 + j];
            pop[(size_t)p * cout + o0 + j] = bs->sel[o0 + j] ? n1 + xpop[p] - 2 * c : n1 - xpop[p] + 2 * c;
        }
}

/* ---- bit-serial kernels: one body (bitserial_body.h), three full adders ---- */

/* AVX2: the full adder in five logic operations (also used by the peak microbenchmark) */
#define CSA_AVX2(h, l, a, b, c)                                                                   \
    do {                                                                                          \
        __m256i u_ = _mm256_xor_si256(a, b);                                                      \
        h = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u_, c));                    \
        l = _mm256_xor_si256(u_, c);                                                              \
    } while (0)
#define CSA CSA_AVX2
#define BITSERIAL_NAME bs_bitserial_avx2
#define BITSERIAL_ATTR T_AVX2
#include "bitserial_body.h"
#undef BITSERIAL_NAME
#undef BITSERIAL_ATTR
#undef CSA

/* AVX-512VL: the full adder in two vpternlogq (0x96: a ^ b ^ c; 0xE8: majority), on the same
 * 256-bit vectors, so everything around it is the AVX2 code */
#define T_512VL __attribute__((target("avx2,popcnt,avx512f,avx512vl")))
#define CSA(h, l, a, b, c)                                                                        \
    do {                                                                                          \
        __m256i a_ = (a), b_ = (b), c_ = (c);                                                     \
        h = _mm256_ternarylogic_epi64(a_, b_, c_, 0xE8);                                          \
        l = _mm256_ternarylogic_epi64(a_, b_, c_, 0x96);                                          \
    } while (0)
#define BITSERIAL_NAME bs_bitserial_avx512
#define BITSERIAL_ATTR T_512VL
#include "bitserial_body.h"
#undef BITSERIAL_NAME
#undef BITSERIAL_ATTR
#undef CSA

/* vpternlogq emulated in AVX2 from its truth table (result bit = imm8[a << 2 | b << 1 | c]), so
 * that the tests check the AVX-512 kernel's immediates on machines without AVX-512 */
T_AVX2 static inline __m256i ternlog_emu(__m256i a, __m256i b, __m256i c, int imm) {
    const __m256i all = _mm256_set1_epi64x(-1);
    __m256i r = _mm256_setzero_si256();
    for (int i = 0; i < 8; i++)
        if ((imm >> i) & 1) {
            __m256i ta = (i & 4) ? a : _mm256_xor_si256(a, all);
            __m256i tb = (i & 2) ? b : _mm256_xor_si256(b, all);
            __m256i tc = (i & 1) ? c : _mm256_xor_si256(c, all);
            r = _mm256_or_si256(r, _mm256_and_si256(ta, _mm256_and_si256(tb, tc)));
        }
    return r;
}
#define CSA(h, l, a, b, c)                                                                        \
    do {                                                                                          \
        __m256i a_ = (a), b_ = (b), c_ = (c);                                                     \
        h = ternlog_emu(a_, b_, c_, 0xE8);                                                        \
        l = ternlog_emu(a_, b_, c_, 0x96);                                                        \
    } while (0)
#define BITSERIAL_NAME bs_bitserial_avx512emu
#define BITSERIAL_ATTR T_AVX2
#include "bitserial_body.h"
#undef BITSERIAL_NAME
#undef BITSERIAL_ATTR
#undef CSA

#define CSA CSA_AVX2 /* the AVX2 full adder again, for the fused form and the peak microbenchmark */

/* ---- the fused bit-sliced form (bitslice_body.h) on 256-bit rows: blocks of 256 positions ---- */
#define VW 4
#define BSV __m256i
#define BSL_ATTR T_AVX2
#define BSL(n) bsl256_##n
#define BSL_PLANES bs_slice_planes_avx2
#define BSL_BLOCK bs_bitslice_avx2
#define V_LOAD(p) _mm256_load_si256((const __m256i *)(p))
#define V_LOADU(p) _mm256_loadu_si256((const __m256i *)(p))
#define V_STORE(p, v) _mm256_store_si256((__m256i *)(p), v)
#define V_STOREU(p, v) _mm256_storeu_si256((__m256i *)(p), v)
#define V_ZERO() _mm256_setzero_si256()
#define V_ONES() _mm256_set1_epi64x(-1)
#define V_SET1(u) _mm256_set1_epi64x((long long)(u))
#define V_XOR(a, b) _mm256_xor_si256(a, b)
#define V_AND(a, b) _mm256_and_si256(a, b)
#define V_OR(a, b) _mm256_or_si256(a, b)
#define V_NOT(a) _mm256_xor_si256(a, _mm256_set1_epi64x(-1))
#define V_XOR3(a, b, c) _mm256_xor_si256(_mm256_xor_si256(a, b), c)
#define V_MAJ(a, b, c) _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(c, _mm256_or_si256(a, b)))
#define V_ORAND(a, b, m) _mm256_and_si256(_mm256_or_si256(a, b), m)
#define V_SELECT(m, a, b) _mm256_or_si256(_mm256_and_si256(m, a), _mm256_andnot_si256(m, b))
#define V_SRLV(v, n) _mm256_srl_epi64(v, _mm_cvtsi32_si128(n))
#define V_SLLV(v, n) _mm256_sll_epi64(v, _mm_cvtsi32_si128(n))
#define V_SRLI(v, s) _mm256_srli_epi64(v, s)
#define V_SLLI(v, s) _mm256_slli_epi64(v, s)
#define V_NONZERO(v) (!_mm256_testz_si256(v, v))
#include "bitslice_body.h"
#undef VW
#undef BSV
#undef BSL_ATTR
#undef BSL
#undef BSL_PLANES
#undef BSL_BLOCK
/* sign bits of 8 floats at a time: movemask of (x < 0); NaN compares false -> bit 0 (+1) */
T_AVX2 void bs_pack_avx2(const float *x, size_t npix, int c, uint64_t *bits) {
    int nw = (c + 63) / 64;
    const __m256 zero = _mm256_setzero_ps();
    for (size_t p = 0; p < npix; p++) {
        const float *src = x + p * (size_t)c;
        uint64_t *dst = bits + p * nw;
        for (int k = 0; k < nw; k++) {
            int j0 = k * 64, j1 = j0 + 64 < c ? j0 + 64 : c;
            uint64_t word = 0;
            int j = j0;
            for (; j + 8 <= j1; j += 8) {
                __m256 v = _mm256_loadu_ps(src + j);
                uint64_t mbits = (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ));
                word |= mbits << (j - j0);
            }
            for (; j < j1; j++) word |= (uint64_t)(src[j] < 0.0f) << (j - j0);
            dst[k] = word;
        }
    }
}

/* ---- peak microbenchmarks: xor+popcount on L1-resident data, bit operations per second ---- */
enum { PN = 512 };
static uint64_t pa[PN] __attribute__((aligned(64))), pb[PN] __attribute__((aligned(64)));

static void peak_fill(void) {
    for (int i = 0; i < PN; i++) {
        pa[i] = (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
        pb[i] = ~((uint64_t)(i + 7) * 0xC2B2AE3D27D4EB4Full);
    }
}

T_AVX2 static uint64_t lut_pass(int reps) {
    LUT_INIT;
    __m256i tot = _mm256_setzero_si256();
    for (int r = 0; r < reps; r++) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < PN; i += 16) {
#define L(k) _mm256_xor_si256(_mm256_load_si256((const __m256i *)(pa + i + k)), _mm256_load_si256((const __m256i *)(pb + i + k)))
            a0 = _mm256_add_epi8(a0, pc8(L(0), lut, m4));
            a1 = _mm256_add_epi8(a1, pc8(L(4), lut, m4));
            a2 = _mm256_add_epi8(a2, pc8(L(8), lut, m4));
            a3 = _mm256_add_epi8(a3, pc8(L(12), lut, m4));
#undef L
            if ((i & 255) == 240) {
                tot = _mm256_add_epi64(tot, _mm256_add_epi64(_mm256_add_epi64(sad(a0), sad(a1)), _mm256_add_epi64(sad(a2), sad(a3))));
                a0 = a1 = a2 = a3 = _mm256_setzero_si256();
            }
        }
        tot = _mm256_add_epi64(tot, _mm256_add_epi64(_mm256_add_epi64(sad(a0), sad(a1)), _mm256_add_epi64(sad(a2), sad(a3))));
    }
    return (uint64_t)hsum64(tot);
}


/* Harley-Seal carry-save counting (Mula, Kurz, Lemire 2018) over long streams */
T_AVX2 static uint64_t hs_pass(int reps) {
    LUT_INIT;
    __m256i tot = _mm256_setzero_si256();
    for (int r = 0; r < reps; r++) {
        __m256i ones = _mm256_setzero_si256(), twos = ones, fours = ones, eights = ones, cnt = ones;
        __m256i sixteens, twosA, twosB, foursA, foursB, eightsA, eightsB;
        for (int i = 0; i < PN / 4; i += 16) {
#define LD(k) _mm256_xor_si256(_mm256_load_si256((const __m256i *)(pa + 4 * (i + k))), _mm256_load_si256((const __m256i *)(pb + 4 * (i + k))))
            CSA(twosA, ones, ones, LD(0), LD(1));
            CSA(twosB, ones, ones, LD(2), LD(3));
            CSA(foursA, twos, twos, twosA, twosB);
            CSA(twosA, ones, ones, LD(4), LD(5));
            CSA(twosB, ones, ones, LD(6), LD(7));
            CSA(foursB, twos, twos, twosA, twosB);
            CSA(eightsA, fours, fours, foursA, foursB);
            CSA(twosA, ones, ones, LD(8), LD(9));
            CSA(twosB, ones, ones, LD(10), LD(11));
            CSA(foursA, twos, twos, twosA, twosB);
            CSA(twosA, ones, ones, LD(12), LD(13));
            CSA(twosB, ones, ones, LD(14), LD(15));
            CSA(foursB, twos, twos, twosA, twosB);
            CSA(eightsB, fours, fours, foursA, foursB);
            CSA(sixteens, eights, eights, eightsA, eightsB);
#undef LD
            cnt = _mm256_add_epi64(cnt, sad(pc8(sixteens, lut, m4)));
        }
        tot = _mm256_add_epi64(tot, _mm256_slli_epi64(cnt, 4));
        tot = _mm256_add_epi64(tot, _mm256_slli_epi64(sad(pc8(eights, lut, m4)), 3));
        tot = _mm256_add_epi64(tot, _mm256_slli_epi64(sad(pc8(fours, lut, m4)), 2));
        tot = _mm256_add_epi64(tot, _mm256_slli_epi64(sad(pc8(twos, lut, m4)), 1));
        tot = _mm256_add_epi64(tot, sad(pc8(ones, lut, m4)));
    }
    return (uint64_t)hsum64(tot);
}

__attribute__((target("popcnt"))) static uint64_t popcnt_pass(int reps) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < PN; i += 4) {
            c0 += (uint64_t)__builtin_popcountll(pa[i] ^ pb[i]);
            c1 += (uint64_t)__builtin_popcountll(pa[i + 1] ^ pb[i + 1]);
            c2 += (uint64_t)__builtin_popcountll(pa[i + 2] ^ pb[i + 2]);
            c3 += (uint64_t)__builtin_popcountll(pa[i + 3] ^ pb[i + 3]);
        }
        __asm__ volatile("" : "+r"(c0), "+r"(c1), "+r"(c2), "+r"(c3));
    }
    return c0 + c1 + c2 + c3;
}

static double peak_run(uint64_t (*pass)(int), double seconds) {
    peak_fill();
    volatile uint64_t sink = pass(10);
    double best = 0, t_end = bs_now() + seconds;
    do {
        double t0 = bs_now();
        sink += pass(200);
        double rate = 200.0 * PN * 64 / (bs_now() - t0);
        if (rate > best) best = rate;
    } while (bs_now() < t_end);
    (void)sink;
    return best;
}

double bs_peak_avx2_lut(double seconds) { return peak_run(lut_pass, seconds); }
double bs_peak_avx2_hs(double seconds) { return peak_run(hs_pass, seconds); }
double bs_peak_popcnt(double seconds) { return peak_run(popcnt_pass, seconds); }

#endif /* BS_X86 */
