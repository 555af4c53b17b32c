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
    int32_t cg = op->cin / op->groups, cog = op->cout / op->groups;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            size_t opix = (size_t)oy * so.w + ox;
            if (op->mode == BS_BOUT_BITS)
                for (int32_t k = 0; k < nwo; k++) ((uint64_t *)out)[opix * nwo + k] = 0;
            for (int32_t o = 0; o < op->cout; o++) {
                int32_t dot = 0, c0 = (o / cog) * cg; /* the group's first input channel */
                for (int32_t ky = 0; ky < g->kh; ky++)
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        int64_t iy = (int64_t)oy * g->sh - g->pt + (int64_t)ky * g->dh;
                        int64_t ix = (int64_t)ox * g->sw - g->pl + (int64_t)kx * g->dw;
                        if (iy < 0 || iy >= si.h || ix < 0 || ix >= si.w) continue; /* zero padding: adds 0 */
                        size_t xw = ((size_t)iy * si.w + (size_t)ix) * nwi;
                        /* weights: tap t's channels at bits [t * cg, (t + 1) * cg) of row o */
                        size_t ww = (size_t)o * op->kwords;
                        int32_t tbit = (ky * g->kw + kx) * cg;
                        for (int32_t c = 0; c < cg; c++) {
                            int xv = get_bit(in, xw, c0 + c) ? -1 : 1;
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

/* float conv weight of output channel o, tap t, group-input channel c (see bs_op.wf) */
static float conv_weight(const bs_op *op, int32_t o, size_t t, int32_t c) {
    int32_t cg = op->cin / op->groups, cog = op->cout / op->groups, grp = o / cog;
    size_t taps = (size_t)op->g.kh * op->g.kw;
    if (op->depthwise) return op->wf[t * (size_t)op->groups + (size_t)grp];
    return op->wf[(((size_t)grp * taps + t) * cg + (size_t)c) * cog + (size_t)(o % cog)];
}

/* float conv, one output at a time, summing taps then channels in double (the fast path's order;
 * 1-bit weights of an ungrouped conv: in float, as model.c's conv_sign) */
void bs_ref_conv2d(const bs_op *op, const float *in, float *out) {
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    int32_t cg = op->cin / op->groups, cog = op->cout / op->groups;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++)
            for (int32_t o = 0; o < op->cout; o++) {
                /* 1-bit weights of an ungrouped conv sum +-x in float, tap by tap, channel by
                 * channel: the arithmetic of the sign-select-and-add kernel (model.c conv_sign) */
                const int sign_sum = op->wscale && op->groups == 1;
                double acc = 0.0;
                float acc_f = 0.0f;
                int32_t c0 = (o / cog) * cg;
                for (int32_t ky = 0; ky < g->kh; ky++)
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        int64_t iy = (int64_t)oy * g->sh - g->pt + (int64_t)ky * g->dh;
                        int64_t ix = (int64_t)ox * g->sw - g->pl + (int64_t)kx * g->dw;
                        if (iy < 0 || iy >= si.h || ix < 0 || ix >= si.w) continue;
                        const float *px = in + ((size_t)iy * si.w + (size_t)ix) * op->cin;
                        for (int32_t c = 0; c < cg; c++) {
                            float w = conv_weight(op, o, (size_t)ky * g->kw + kx, c);
                            if (sign_sum)
                                acc_f += w < 0 ? -px[c0 + c] : px[c0 + c];
                            else
                                acc += (double)px[c0 + c] * (double)w;
                        }
                    }
                out[((size_t)oy * so.w + ox) * op->cout + o] =
                    bs_conv_finish(op, o, sign_sum ? (double)acc_f : acc);
            }
}

/* int8 conv, one output at a time: padding holds the zero point, so it adds 0 */
void bs_ref_qconv2d(const bs_op *op, const int8_t *in, void *out) {
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    int32_t cg = op->cin / op->groups, cog = op->cout / op->groups;
    size_t taps = (size_t)g->kh * g->kw;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++)
            for (int32_t o = 0; o < op->cout; o++) {
                int32_t acc = 0, c0 = (o / cog) * cg;
                for (int32_t ky = 0; ky < g->kh; ky++)
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        int64_t iy = (int64_t)oy * g->sh - g->pt + (int64_t)ky * g->dh;
                        int64_t ix = (int64_t)ox * g->sw - g->pl + (int64_t)kx * g->dw;
                        if (iy < 0 || iy >= si.h || ix < 0 || ix >= si.w) continue;
                        const int8_t *px = in + ((size_t)iy * si.w + (size_t)ix) * op->cin;
                        const int8_t *w = op->wq + ((size_t)o * taps + (size_t)ky * g->kw + kx) * cg;
                        for (int32_t c = 0; c < cg; c++) acc += ((int32_t)px[c0 + c] - op->qzero) * (int32_t)w[c];
                    }
                size_t idx = ((size_t)oy * so.w + ox) * op->cout + o;
                float v = bs_requant_float(op, o, acc);
                if (op->mode == BS_QOUT_INT8)
                    ((int8_t *)out)[idx] = bs_quantize_value(v, op->oscale, op->ozero);
                else
                    ((float *)out)[idx] = v;
            }
}

/* average pool, one channel at a time */
void bs_ref_avgpool(const bs_op *op, const float *in, float *out) {
    bs_shape si = op->s0, so = op->so;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            int32_t y0, y1, x0, x1, div;
            bs_avgpool_window(op, oy, ox, &y0, &y1, &x0, &x1, &div);
            for (int32_t c = 0; c < si.c; c++) {
                double s = 0.0;
                for (int32_t iy = y0; iy < y1; iy++)
                    for (int32_t ix = x0; ix < x1; ix++) s += in[((size_t)iy * si.w + (size_t)ix) * si.c + c];
                out[((size_t)oy * so.w + ox) * si.c + c] = y1 > y0 && x1 > x0 ? (float)(s / div) : 0.0f;
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
