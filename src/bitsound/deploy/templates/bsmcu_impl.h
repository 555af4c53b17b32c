/* bsmcu_impl.h: the inline bodies of the hot kernels (float and binary convolutions) and their
 * helpers. bsmcu.c wraps them as bsm_conv / bsm_bconv; the generated model.c calls them directly on
 * its static const parameter blocks, so that the compiler specializes each layer (its geometry,
 * channel counts and kernel length become constants: loops unrolled, branches gone). */
#ifndef BSMCU_IMPL_H
#define BSMCU_IMPL_H

#include <math.h>
#include <string.h>

#include "bsmcu.h"

/* a generated project leaves out the kernels' parts its model does not use (bsm_config.h) */
#ifdef BSM_CONFIG
#include "bsm_config.h"
#endif
#ifndef BSM_WITH_TRANSCENDENTAL
#define BSM_WITH_TRANSCENDENTAL 1 /* tanh, silu, sigmoid in fused convolution steps */
#endif

#if BSM_POPCOUNT == 4 && defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
#endif

#if defined(__GNUC__)
#define BSM_INLINE static inline __attribute__((always_inline))
#define BSM_NOINLINE __attribute__((noinline))
#else
#define BSM_INLINE static inline
#define BSM_NOINLINE
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define BSM_UNROLL _Pragma("GCC unroll 8")
#else
#define BSM_UNROLL
#endif

/* ---- popcount ---- */

/* per-byte counts of the set bits of v (each byte 0 .. 8) */
static inline uint32_t byte_counts(uint32_t v) {
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    return (v + (v >> 4)) & 0x0F0F0F0Fu;
}

#if BSM_POPCOUNT == 1
#define POP_ADD(acc, v) ((acc) + (uint32_t)__builtin_popcount(v))
#elif BSM_POPCOUNT == 2
#define B2(n) n, n + 1, n + 1, n + 2
#define B4(n) B2(n), B2(n + 1), B2(n + 1), B2(n + 2)
#define B6(n) B4(n), B4(n + 1), B4(n + 1), B4(n + 2)
#if defined(__GNUC__)
__attribute__((unused))
#endif
static const uint8_t POP8[256] = {B6(0), B6(1), B6(1), B6(2)};
#define POP_ADD(acc, v) \
    ((acc) + POP8[(v) & 0xFFu] + POP8[((v) >> 8) & 0xFFu] + POP8[((v) >> 16) & 0xFFu] + POP8[(v) >> 24])
#elif BSM_POPCOUNT == 3
#define POP_ADD(acc, v) ((acc) + ((byte_counts(v) * 0x01010101u) >> 24))
#elif BSM_POPCOUNT == 4
#if defined(__ARM_FEATURE_SIMD32) && defined(__GNUC__) && defined(__thumb2__)
/* The SWAR steps with the masks in registers, so that Thumb-2's shifted operands fold each shift
 * into its AND / ADD (8 instructions; the compiler's C takes 12 with immediate masks), then USADA8:
 * acc + the sum of the four byte counts, one instruction. */
#define BSM_POP_ASM 1
static inline uint32_t pop_usada8(uint32_t acc, uint32_t v, uint32_t m1, uint32_t m2, uint32_t m4, uint32_t z) {
    uint32_t t;
    __asm__("and %[t], %[m1], %[v], lsr #1\n\t"
            "sub %[v], %[v], %[t]\n\t"
            "and %[t], %[m2], %[v], lsr #2\n\t"
            "and %[v], %[v], %[m2]\n\t"
            "add %[v], %[v], %[t]\n\t"
            "add %[v], %[v], %[v], lsr #4\n\t"
            "and %[v], %[v], %[m4]\n\t"
            "usada8 %[acc], %[v], %[z], %[acc]"
            : [v] "+&r"(v), [t] "=&r"(t), [acc] "+r"(acc)
            : [m1] "r"(m1), [m2] "r"(m2), [m4] "r"(m4), [z] "r"(z));
    return acc;
}
#define POP_DECL const uint32_t pm1 = 0x55555555u, pm2 = 0x33333333u, pm4 = 0x0F0F0F0Fu, pz = 0u;
#define POP_ADD(acc, v) pop_usada8((acc), (v), pm1, pm2, pm4, pz)
#elif defined(__ARM_FEATURE_SIMD32)
/* USADA8: acc + sum of |byte_i(a) - byte_i(0)|, one instruction */
#define POP_ADD(acc, v) __usada8(byte_counts(v), 0u, (acc))
#else
#define POP_ADD(acc, v) ((acc) + ((byte_counts(v) * 0x01010101u) >> 24))
#endif
#else
#error "BSM_POPCOUNT must be 1 (builtin), 2 (table), 3 (SWAR + multiply) or 4 (SWAR + USADA8)"
#endif
#ifndef POP_DECL
#define POP_DECL
#endif

static inline uint32_t xorpop(const uint32_t *a, const uint32_t *b, int32_t n) {
    POP_DECL
    uint32_t acc = 0;
    BSM_UNROLL
    for (int32_t i = 0; i < n; i++) {
        const uint32_t v = a[i] ^ b[i];
        acc = POP_ADD(acc, v);
    }
    return acc;
}

static inline uint32_t xorpop_masked(const uint32_t *a, const uint32_t *b, const uint32_t *m, int32_t n) {
    POP_DECL
    uint32_t acc = 0;
    BSM_UNROLL
    for (int32_t i = 0; i < n; i++) {
        const uint32_t v = (a[i] ^ b[i]) & m[i];
        acc = POP_ADD(acc, v);
    }
    return acc;
}

static inline size_t bsm_a8(size_t n) { return (n + 7) / 8 * 8; }

/* taps [k0, k1) of a window starting at i0 (stride d) that fall inside [0, n) */
static inline void valid_taps(int32_t i0, int32_t k, int32_t d, int32_t n, int32_t *k0, int32_t *k1) {
    int32_t a = 0, b = k;
    while (a < k && i0 + a * d < 0) a++;
    while (b > a && i0 + (b - 1) * d >= n) b--;
    *k0 = a;
    *k1 = b;
}

/* OR n bits of src from bit sbit into dst from bit dbit */
static inline void copy_bits(uint32_t *dst, int32_t dbit, const uint32_t *src, int32_t sbit, int32_t n) {
    while (n > 0) {
        int32_t take = 32 - (sbit & 31), room = 32 - (dbit & 31);
        if (take > room) take = room;
        if (take > n) take = n;
        uint32_t v = src[sbit >> 5] >> (sbit & 31);
        if (take < 32) v &= (1u << take) - 1u;
        dst[dbit >> 5] |= v << (dbit & 31);
        sbit += take;
        dbit += take;
        n -= take;
    }
}

static inline void set_bits(uint32_t *dst, int32_t bit, int32_t n) {
    while (n > 0) {
        int32_t take = 32 - (bit & 31);
        if (take > n) take = n;
        dst[bit >> 5] |= (take < 32 ? (1u << take) - 1u : 0xFFFFFFFFu) << (bit & 31);
        bit += take;
        n -= take;
    }
}


static inline float relu1(float v) { return v > 0 ? v : (v == v ? 0.0f : v); }
static inline float silu1(float v) { return v / (1.0f + expf(-v)); }
static inline float sigmoid1(float v) { return 1.0f / (1.0f + expf(-v)); }


/* one output channel's sum over the patch, in the engine's order (taps, then channels) */
static inline bsm_acc_t dot_f32(const float *x, const float *w, int32_t n) {
    bsm_acc_t acc = 0;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) { /* unrolled, still one sum in order */
        acc += (bsm_acc_t)x[i] * (bsm_acc_t)w[i];
        acc += (bsm_acc_t)x[i + 1] * (bsm_acc_t)w[i + 1];
        acc += (bsm_acc_t)x[i + 2] * (bsm_acc_t)w[i + 2];
        acc += (bsm_acc_t)x[i + 3] * (bsm_acc_t)w[i + 3];
    }
    for (; i < n; i++) acc += (bsm_acc_t)x[i] * (bsm_acc_t)w[i];
    return acc;
}

/* the sum of output channel o over the patch, for any weight storage */
static inline bsm_acc_t conv_sum(const bsm_conv_t *p, const float *patch, int32_t o, int32_t taps, int32_t cg) {
    const int32_t kn = taps * cg;
    if (p->wdtype == BSM_W_F32) return dot_f32(patch, p->w + (size_t)o * kn, kn);
    bsm_acc_t a = 0;
    if (p->wdtype == BSM_W_F16) {
        const uint16_t *w = p->w16 + (size_t)o * kn;
        for (int32_t i = 0; i < kn; i++) a += (bsm_acc_t)patch[i] * (bsm_acc_t)bsm_half_to_float(w[i]);
        return a;
    }
    /* 1-bit weights on float inputs: add or subtract, taps then channels. An ungrouped conv sums
     * in float whatever bsm_acc_t is, as the engine's conv_sign (float lanes); a grouped one in
     * bsm_acc_t, as the engine's double path. (A padded tap adds +-0, which leaves a sum that
     * starts at +0 unchanged, as the engine's skipped rows.) */
    const int32_t sw = (cg + 31) / 32, single = p->groups == 1;
    float af = 0.0f;
    for (int32_t t = 0; t < taps; t++) {
        const uint32_t *wb = p->wsign + ((size_t)o * taps + t) * sw;
        const float *xt = patch + (size_t)t * cg;
        for (int32_t c = 0; c < cg; c++) {
            const float v = (wb[c >> 5] >> (c & 31)) & 1u ? -xt[c] : xt[c];
            if (single)
                af += v;
            else
                a += (bsm_acc_t)v;
        }
    }
    return single ? (bsm_acc_t)af : a;
}

/* output channel o from its sum: the engine's finish (bs_conv_finish), then the fused steps */
static inline float conv_finish(const bsm_conv_t *p, int32_t o, bsm_acc_t acc) {
    float v;
    if (p->wscale)
        v = (float)acc * p->wscale[o] + (p->bias ? p->bias[o] : 0.0f);
    else if (p->bias)
        v = (float)(acc + (bsm_acc_t)p->bias[o]);
    else
        v = (float)acc;
    for (int32_t e = 0; e < p->n_epi; e++) {
        const bsm_epi *ep = &p->epi[e];
        switch (ep->kind) {
        case BSM_EPI_AFFINE: v = v * ep->scale[o] + ep->bias[o]; break;
        case BSM_EPI_RELU: v = relu1(v); break;
        case BSM_EPI_PRELU: v = v >= 0 ? v : v * ep->scale[o]; break;
#if BSM_WITH_TRANSCENDENTAL
        case BSM_EPI_TANH: v = tanhf(v); break;
        case BSM_EPI_SILU: v = silu1(v); break;
        default: v = sigmoid1(v); break;
#else
        default: break;
#endif
        }
    }
    return v;
}

static inline void store_pixel(const bsm_conv_t *p, size_t pix, const float *v, void *y) {
    if (p->pack) {
        const int32_t nw = (p->cout + 31) / 32;
        uint32_t *dst = (uint32_t *)y + pix * nw;
        for (int32_t k = 0; k < nw; k++) {
            const int32_t c1 = (k + 1) * 32 < p->cout ? (k + 1) * 32 : p->cout;
            uint32_t word = 0;
            for (int32_t j = k * 32; j < c1; j++) word |= (uint32_t)(v[j] < 0.0f) << (j - k * 32);
            dst[k] = word;
        }
    } else {
        memcpy((float *)y + pix * p->cout, v, (size_t)p->cout * sizeof(float));
    }
}

BSM_INLINE void bsm_conv_body(const bsm_conv_t *p, const float *x, void *y, void *scratch) {
    const int32_t cin = p->cin, cout = p->cout, cg = cin / p->groups, cog = cout / p->groups;
    const int32_t kh = p->g.kh, kw = p->g.kw, sh = p->g.sh, sw = p->g.sw, pt = p->g.pt, pl = p->g.pl;
    const int32_t dh = p->g.dh, dw = p->g.dw, ih = p->si.h, iw = p->si.w, taps = kh * kw;
    const size_t kn = (size_t)taps * cg;
    /* without a pool: a 1 x 1 window of stride 1 over the conv's outputs */
    const int32_t pool = p->pool, oh = pool ? p->so.h : p->sc.h, ow = pool ? p->so.w : p->sc.w;
    const int32_t qkh = pool ? p->pg.kh : 1, qkw = pool ? p->pg.kw : 1, qsh = pool ? p->pg.sh : 1;
    const int32_t qsw = pool ? p->pg.sw : 1, qpt = pool ? p->pg.pt : 0, qpl = pool ? p->pg.pl : 0;
    /* the patches of the pool window's conv pixels, then the outputs */
    float *patches = (float *)scratch;
    float *vals = (float *)((char *)scratch + bsm_a8((size_t)qkh * qkw * kn * 4));
    for (int32_t oy = 0; oy < oh; oy++)
        for (int32_t ox = 0; ox < ow; ox++) {
            for (int32_t grp = 0; grp < p->groups; grp++) {
                /* each valid conv pixel's patch [kh][kw][cg] of channels [grp cg, (grp + 1) cg), zeros
                 * in the padding */
                int32_t np = 0;
                for (int32_t qy = 0; qy < qkh; qy++) {
                    const int32_t cy = oy * qsh - qpt + qy;
                    if (cy < 0 || cy >= p->sc.h) continue;
                    for (int32_t qx = 0; qx < qkw; qx++) {
                        const int32_t cx = ox * qsw - qpl + qx;
                        if (cx < 0 || cx >= p->sc.w) continue;
                        const int32_t iy0 = cy * sh - pt, ix0 = cx * sw - pl;
                        float *d = patches + (size_t)np++ * kn;
                        for (int32_t ky = 0; ky < kh; ky++) {
                            const int32_t iy = iy0 + ky * dh;
                            for (int32_t kx = 0; kx < kw; kx++, d += cg) {
                                const int32_t ix = ix0 + kx * dw;
                                if (iy < 0 || iy >= ih || ix < 0 || ix >= iw) {
                                    for (int32_t c = 0; c < cg; c++) d[c] = 0.0f;
                                } else {
                                    const float *src = x + ((size_t)iy * iw + ix) * cin + (size_t)grp * cg;
                                    for (int32_t c = 0; c < cg; c++) d[c] = src[c];
                                }
                            }
                        }
                    }
                }
                /* per output channel, its weights meet every patch in turn (no store in between, so
                 * they stay in registers); the max over the window, in the window's order */
                for (int32_t o = grp * cog; o < (grp + 1) * cog; o++) {
                    float m = -INFINITY;
                    for (int32_t q = 0; q < np; q++) {
                        const float v = conv_finish(p, o, conv_sum(p, patches + (size_t)q * kn, o, taps, cg));
                        m = (v > m || v != v) ? v : m; /* NaN propagates, as in torch */
                    }
                    vals[o] = m;
                }
            }
            store_pixel(p, (size_t)oy * ow + ox, vals, y);
        }
}

BSM_INLINE void bsm_bconv_body(const bsm_bconv_t *p, const uint32_t *x, void *y, void *scratch) {
    const bsm_geom *g = &p->g;
    const int32_t cg = p->cin / p->groups, cog = p->cout / p->groups, taps = g->kh * g->kw;
    const int32_t nwi = (p->cin + 31) / 32, nwo = (p->cout + 31) / 32, kw = p->kwords;
    uint32_t *patch = (uint32_t *)scratch;
    uint32_t *mask = (uint32_t *)((char *)scratch + bsm_a8((size_t)kw * 4));
    for (int32_t oy = 0; oy < p->so.h; oy++)
        for (int32_t ox = 0; ox < p->so.w; ox++) {
            const size_t pix = (size_t)oy * p->so.w + ox;
            const int32_t iy0 = oy * g->sh - g->pt, ix0 = ox * g->sw - g->pl;
            int32_t ky0, ky1, kx0, kx1;
            valid_taps(iy0, g->kh, g->dh, p->si.h, &ky0, &ky1);
            valid_taps(ix0, g->kw, g->dw, p->si.w, &kx0, &kx1);
            const int32_t nvt = (ky1 - ky0) * (kx1 - kx0), full = nvt == taps, nvalid = nvt * cg;
            uint32_t *bits = (uint32_t *)y + pix * nwo;
            if (p->mode == BSM_BOUT_BITS)
                for (int32_t k = 0; k < nwo; k++) bits[k] = 0;
            for (int32_t grp = 0; grp < p->groups; grp++) {
                memset(patch, 0, (size_t)kw * 4);
                if (!full) memset(mask, 0, (size_t)kw * 4);
                for (int32_t ky = ky0; ky < ky1; ky++)
                    for (int32_t kx = kx0; kx < kx1; kx++) {
                        const int32_t t = ky * g->kw + kx;
                        const uint32_t *src =
                            x + ((size_t)(iy0 + ky * g->dh) * p->si.w + (size_t)(ix0 + kx * g->dw)) * nwi;
                        copy_bits(patch, t * cg, src, grp * cg, cg);
                        if (!full) set_bits(mask, t * cg, cg);
                    }
                for (int32_t oo = 0; oo < cog; oo++) {
                    const int32_t o = grp * cog + oo;
                    const uint32_t *w = p->w + (size_t)o * kw;
                    const int32_t pop = (int32_t)(full ? xorpop(patch, w, kw) : xorpop_masked(patch, w, mask, kw));
                    const int32_t dot = nvalid - 2 * pop;
                    if (p->mode == BSM_BOUT_BITS) {
                        const int32_t v = p->flip[o] ? -dot : dot;
                        if (v < p->thr[o]) bits[o >> 5] |= 1u << (o & 31);
                    } else if (p->mode == BSM_BOUT_FLOAT) {
                        ((float *)y)[pix * p->cout + o] = (float)dot * p->scale[o] + p->bias[o];
                    } else {
                        ((float *)y)[pix * p->cout + o] = (float)dot;
                    }
                }
            }
        }
}


#endif
