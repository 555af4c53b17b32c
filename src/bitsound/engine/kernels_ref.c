/* kernels_ref.c: the plain reference of every binary op, written from the definitions one bit
 * at a time with no blocking, no padding tricks and no word-level shortcuts. The fast paths
 * (kernels_scalar.c, kernels_avx2.c, kernels_avx512.c and the structure in model.c) are tested
 * against these, and these against PyTorch. */
#include <string.h>

#include "bsnn.h"

static int get_bit(const uint64_t *words, size_t word_index, int64_t bit) {
    return (int)((words[word_index + (size_t)(bit / 64)] >> (bit % 64)) & 1u);
}

/* sign with sign(0) = +1: bit 1 for x < 0 (NaN and -0.0 give bit 0) */
void bs_pack_ref(const float *x, size_t npix, int c, uint64_t *bits) {
    int nw = (c + 63) / 64;
    for (size_t p = 0; p < npix; p++) {
        for (int k = 0; k < nw; k++) bits[p * nw + k] = 0;
        for (int j = 0; j < c; j++)
            if (x[p * (size_t)c + j] < 0.0f) bits[p * nw + j / 64] |= (uint64_t)1 << (j % 64);
    }
}

void bs_ref_bconv2d(const bs_op *op, const uint64_t *in, void *out) {
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    int32_t nwi = (op->cin + 63) / 64, nwo = (op->cout + 63) / 64;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            size_t opix = (size_t)oy * so.w + ox;
            if (op->mode == BS_BOUT_BITS)
                for (int32_t k = 0; k < nwo; k++) ((uint64_t *)out)[opix * nwo + k] = 0;
            for (int32_t o = 0; o < op->cout; o++) {
                int32_t dot = 0;
                for (int32_t ky = 0; ky < g->kh; ky++)
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        int64_t iy = (int64_t)oy * g->sh - g->pt + (int64_t)ky * g->dh;
                        int64_t ix = (int64_t)ox * g->sw - g->pl + (int64_t)kx * g->dw;
                        if (iy < 0 || iy >= si.h || ix < 0 || ix >= si.w) continue; /* zero padding: adds 0 */
                        size_t xw = ((size_t)iy * si.w + (size_t)ix) * nwi;
                        /* weights: tap t's channels at bits [t * cin, (t + 1) * cin) of row o */
                        size_t ww = (size_t)o * op->kwords;
                        int32_t tbit = (ky * g->kw + kx) * op->cin;
                        for (int32_t c = 0; c < op->cin; c++) {
                            int xv = get_bit(in, xw, c) ? -1 : 1;
                            int wv = get_bit(op->wbits, ww, tbit + c) ? -1 : 1;
                            dot += xv * wv;
                        }
                    }
                if (op->mode == BS_BOUT_BITS) {
                    int32_t v = op->flip[o] ? -dot : dot;
                    int plus_one = v >= op->thr[o];
                    if (!plus_one) ((uint64_t *)out)[opix * nwo + o / 64] |= (uint64_t)1 << (o % 64);
                } else if (op->mode == BS_BOUT_FLOAT) {
                    ((float *)out)[opix * op->cout + o] = (float)dot * op->scale[o] + op->bias[o];
                } else {
                    ((float *)out)[opix * op->cout + o] = (float)dot;
                }
            }
        }
}

/* max-pool of +-1 values, one channel at a time; windows clipped to the input */
void bs_ref_maxpool_bits(const bs_op *op, const uint64_t *in, uint64_t *out) {
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    int32_t nw = (si.c + 63) / 64;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            size_t opix = (size_t)oy * so.w + ox;
            for (int32_t k = 0; k < nw; k++) out[opix * nw + k] = 0;
            for (int32_t c = 0; c < si.c; c++) {
                int best = -2;
                for (int32_t ky = 0; ky < g->kh; ky++)
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        int64_t iy = (int64_t)oy * g->sh - g->pt + ky;
                        int64_t ix = (int64_t)ox * g->sw - g->pl + kx;
                        if (iy < 0 || iy >= si.h || ix < 0 || ix >= si.w) continue;
                        int v = get_bit(in, ((size_t)iy * si.w + (size_t)ix) * nw, c) ? -1 : 1;
                        if (v > best) best = v;
                    }
                if (best == -1) out[opix * nw + c / 64] |= (uint64_t)1 << (c % 64);
            }
        }
}
