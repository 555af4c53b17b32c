/* kernels_scalar.c: the portable path (plain C99 + __builtin_popcountll), same structure as the
 * vector paths: four independent accumulators per output, blocks of output channels so that a
 * block's weights stay in L1 while the row's patches stream past them. */
#include <string.h>

#include "bsnn.h"

#define OBLOCK 64 /* output channels per cache block */

void bs_xor_popcount_scalar(const uint64_t *patches, int n, const uint64_t *w, int cout, int kwords,
                            int32_t *pop) {
    for (int o0 = 0; o0 < cout; o0 += OBLOCK) {
        int o1 = o0 + OBLOCK < cout ? o0 + OBLOCK : cout;
        for (int p = 0; p < n; p++) {
            const uint64_t *x = patches + (size_t)p * kwords;
            for (int o = o0; o < o1; o++) {
                const uint64_t *wo = w + (size_t)o * kwords;
                uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                for (int k = 0; k < kwords; k += 4) {
                    a0 += (uint64_t)__builtin_popcountll(x[k] ^ wo[k]);
                    a1 += (uint64_t)__builtin_popcountll(x[k + 1] ^ wo[k + 1]);
                    a2 += (uint64_t)__builtin_popcountll(x[k + 2] ^ wo[k + 2]);
                    a3 += (uint64_t)__builtin_popcountll(x[k + 3] ^ wo[k + 3]);
                }
                pop[(size_t)p * cout + o] = (int32_t)(a0 + a1 + a2 + a3);
            }
        }
    }
}

void bs_pack_scalar(const float *x, size_t npix, int c, uint64_t *bits) {
    int nw = (c + 63) / 64;
    for (size_t p = 0; p < npix; p++) {
        const float *src = x + p * (size_t)c;
        for (int k = 0; k < nw; k++) {
            int j1 = (k + 1) * 64 < c ? (k + 1) * 64 : c;
            uint64_t word = 0;
            for (int j = k * 64; j < j1; j++) word |= (uint64_t)(src[j] < 0.0f) << (j - k * 64);
            bits[p * nw + k] = word;
        }
    }
}

void bs_bits_out_scalar(const int32_t *pop, int cout, int32_t nvalid, const int32_t *thr, const int32_t *fsign,
                        uint64_t *dst) {
    for (int o0 = 0; o0 < cout; o0 += 64) {
        int n = cout - o0 < 64 ? cout - o0 : 64;
        uint64_t word = 0;
        for (int b = 0; b < n; b++) {
            int o = o0 + b;
            word |= (uint64_t)(fsign[o] * (nvalid - 2 * pop[o]) < thr[o]) << b;
        }
        dst[o0 / 64] = word;
    }
}

/* ---- bit-serial popcounts (the algorithm of kernels_avx2.c in portable C) ---- */

/* in-place 64x64 bit transpose: bit j of a[i] <-> bit i of a[j] */
static void transpose64(uint64_t a[64]) {
    uint64_t m = 0x00000000FFFFFFFFull;
    for (int j = 32; j; j >>= 1, m ^= m << j)
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
            a[k | j] ^= t;
            a[k] ^= t << j;
        }
}

/* patches [n <= 256][kwords] -> xt [kwords * 64][4]: word q of row b holds bit b of the patches
 * of pixels 64q .. 64q + 63 (pixels >= n are zero) */
void bs_transpose_patches(const uint64_t *patches, int n, int kwords, uint64_t *xt) {
    uint64_t blk[64];
    for (int q = 0; q < 4; q++) {
        int base = q * 64, cnt = n - base < 0 ? 0 : (n - base > 64 ? 64 : n - base);
        for (int j = 0; j < kwords; j++) {
            uint64_t *dst = xt + (size_t)j * 64 * 4 + q;
            if (cnt == 0) {
                for (int b = 0; b < 64; b++) dst[(size_t)b * 4] = 0;
                continue;
            }
            for (int i = 0; i < cnt; i++) blk[i] = patches[(size_t)(base + i) * kwords + j];
            for (int i = cnt; i < 64; i++) blk[i] = 0;
            transpose64(blk);
            for (int b = 0; b < 64; b++) dst[(size_t)b * 4] = blk[b];
        }
    }
}

static size_t a64(size_t x) { return (x + 63) / 64 * 64; }

/* add the listed rows of xt to the bit-sliced per-pixel counters (ripple carry) */
static void add_rows(uint64_t *planes, int L, const uint64_t *xt, const uint16_t *idx, uint32_t m) {
    for (uint32_t i = 0; i < m; i++) {
        const uint64_t *v = (const uint64_t *)((const char *)xt + BS_ROW_BYTES(idx[i], 32)); /* 4 words */
        for (int q = 0; q < 4; q++) {
            uint64_t carry = v[q];
            for (int l = 0; l < L && carry; l++) {
                uint64_t t = planes[l * 4 + q] & carry;
                planes[l * 4 + q] ^= carry;
                carry = t;
            }
        }
    }
}

/* pop[p][o] = popcount(patch_p xor w_o) = n1 + X - 2 C1 (listed w = 1) or n1 - X + 2 C0 (w = 0),
 * C counted per pixel with a ripple-carry bit-sliced counter over the listed rows of xt: one
 * counter per segment, summed chunk by chunk; a channel's C is its pair's shared count plus its
 * own (bs_bitserial in bsnn.h) */
void bs_bitserial_scalar(const uint64_t *patches, int n, const bs_op *op, int32_t *pop, void *work) {
    const bs_bitserial *bs = op->bser;
    const int kw4 = op->kwords, cout = op->cout, L = bs->nplanes, npairs = (cout + 1) / 2;
    const size_t stride = (size_t)(L + 1) * 4; /* words per segment counter, as the AVX2 kernel */
    uint64_t *xt = (uint64_t *)work;
    int32_t *xpop = (int32_t *)((char *)work + a64(BS_XT_BYTES(kw4)));
    uint64_t *state = (uint64_t *)((char *)xpop + a64(BS_PIXEL_BLOCK * 4) + a64((size_t)L * 32) +
                                   a64(8 * BS_PIXEL_BLOCK * 4));
    bs_transpose_patches(patches, n, kw4, xt);
    memset(xt + (size_t)kw4 * 64 * 4, 0, 32); /* the zero row */
    for (int p = 0; p < n; p++) {
        int32_t c = 0;
        for (int j = 0; j < kw4; j++) c += __builtin_popcountll(patches[(size_t)p * kw4 + j]);
        xpop[p] = c;
    }
    memset(state, 0, (size_t)3 * npairs * stride * 8);
    for (int c = 0; c < bs->nchunks; c++) {
        const uint32_t *seg = bs->start + (size_t)3 * npairs * c;
        for (int s = 0; s < 3 * npairs; s++) add_rows(state + s * stride, L, xt, bs->idx + seg[s], seg[s + 1] - seg[s]);
    }
    for (int o = 0; o < cout; o++) {
        const uint64_t *sh = state + (size_t)3 * (o / 2) * stride, *own = sh + (size_t)(1 + o % 2) * stride;
        const int32_t n1 = bs->n1[o], sel = bs->sel[o];
        for (int p = 0; p < n; p++) {
            int32_t c = 0;
            for (int l = L - 1; l >= 0; l--)
                c = 2 * c + (int32_t)((sh[l * 4 + p / 64] >> (p % 64)) & 1) + (int32_t)((own[l * 4 + p / 64] >> (p % 64)) & 1);
            pop[(size_t)p * cout + o] = sel ? n1 + xpop[p] - 2 * c : n1 - xpop[p] + 2 * c;
        }
    }
}

/* ---- the fused bit-sliced form (bitslice_body.h) in portable C: 64-bit rows, blocks of 64 ---- */
#define VW 1
#define BSV uint64_t
#define BSL_ATTR
#define BSL(n) bsl64_##n
#define BSL_PLANES bs_slice_planes_scalar
#define BSL_BLOCK bs_bitslice_scalar
#define V_LOAD(p) (*(const uint64_t *)(p))
#define V_LOADU(p) (*(const uint64_t *)(p))
#define V_STORE(p, v) (*(uint64_t *)(p) = (v))
#define V_STOREU(p, v) (*(uint64_t *)(p) = (v))
#define V_ZERO() ((uint64_t)0)
#define V_ONES() (~(uint64_t)0)
#define V_SET1(u) ((uint64_t)(u))
#define V_XOR(a, b) ((a) ^ (b))
#define V_AND(a, b) ((a) & (b))
#define V_OR(a, b) ((a) | (b))
#define V_NOT(a) (~(a))
#define V_XOR3(a, b, c) ((a) ^ (b) ^ (c))
#define V_MAJ(a, b, c) (((a) & (b)) | ((c) & ((a) | (b))))
#define V_ORAND(a, b, m) (((a) | (b)) & (m))
#define V_SELECT(m, a, b) (((m) & (a)) | (~(m) & (b)))
#define V_SRLV(v, n) ((n) >= 64 ? (uint64_t)0 : (v) >> (n))
#define V_SLLV(v, n) ((n) >= 64 ? (uint64_t)0 : (v) << (n))
#define V_SRLI(v, s) ((v) >> (s))
#define V_SLLI(v, s) ((v) << (s))
#define V_NONZERO(v) ((v) != 0)
#include "bitslice_body.h"

/* xor+popcount throughput of this path on L1-resident data, in bit operations per second */
double bs_peak_scalar(double seconds) {
    enum { N = 512 };
    static uint64_t a[N], b[N];
    for (int i = 0; i < N; i++) {
        a[i] = (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
        b[i] = ~((uint64_t)(i + 7) * 0xC2B2AE3D27D4EB4Full);
    }
    volatile uint64_t sink = 0;
    double best = 0, t_end = bs_now() + seconds;
    do {
        double t0 = bs_now();
        uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
        for (int r = 0; r < 200; r++) {
            for (int i = 0; i < N; i += 4) {
                c0 += (uint64_t)__builtin_popcountll(a[i] ^ b[i]);
                c1 += (uint64_t)__builtin_popcountll(a[i + 1] ^ b[i + 1]);
                c2 += (uint64_t)__builtin_popcountll(a[i + 2] ^ b[i + 2]);
                c3 += (uint64_t)__builtin_popcountll(a[i + 3] ^ b[i + 3]);
            }
            __asm__ volatile("" : "+r"(c0), "+r"(c1), "+r"(c2), "+r"(c3));
        }
        sink += c0 + c1 + c2 + c3;
        double dt = bs_now() - t0;
        double rate = 200.0 * N * 64 / dt;
        if (rate > best) best = rate;
    } while (bs_now() < t_end);
    (void)sink;
    return best;
}
