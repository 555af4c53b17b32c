/* model.c: runs a loaded graph, one example at a time, on a caller-provided arena.
 *
 * The float ops (input transpose, feature norm, affine, activations, float conv, pooling,
 * linear, add) have one plain implementation shared by every instruction set. The binary ops go
 * through the kernel table: the binary convolution gathers, for one output row at a time, the
 * packed patch of every output pixel into a contiguous buffer (kh * kw * nw words, zero-padded
 * to a multiple of 4 words; a few KB that stay in L1) and hands the patches and the packed
 * weights to the instruction set's xor+popcount kernel, which blocks over output channels.
 * Taps that fall in the zero padding were gathered as zero words, which add popcount(w) for
 * that tap; the output stage subtracts those (the per-tap weight popcounts are precomputed at
 * load) so that dot = n_valid - 2 * popcount over the valid taps only, exactly the layers'
 * padding semantics.
 */
#include <math.h>
#include <string.h>
#include <time.h>

#include "bsnn.h"

/* float ops get an AVX2 clone picked at load time by the dynamic linker (GCC, x86-64 Linux);
 * the per-element arithmetic is the same in both clones, so the results are identical */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(BS_NO_CLONES)
#define BS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define BS_CLONES
#endif

double bs_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

size_t bs_model_arena_bytes(const bs_model *m) { return m->arena_bytes; }

static void *slot(const bs_model *m, void *arena, int s) { return (char *)arena + m->slot_off[s]; }

const float *bs_model_output(const bs_model *m, const void *arena) {
    return (const float *)((const char *)arena + m->slot_off[m->output_slot]);
}

/* ---- float ops ---- */
static void op_input(const bs_model *m, const float *x, float *y) {
    int32_t c = m->in_c, h = m->in_h, w = m->in_w;
    for (int32_t ch = 0; ch < c; ch++)
        for (int32_t i = 0; i < h; i++)
            for (int32_t j = 0; j < w; j++) y[((size_t)i * w + j) * c + ch] = x[((size_t)ch * h + i) * w + j];
}

/* FeatureNorm (bitsound.models.cnn): optional floor at max - floor_off, then mean removal (per
 * band over time, or over the example) and division by the example's unbiased std + eps */
static void op_feature_norm(const bs_op *op, const float *x, float *y, double *scratch) {
    bs_shape s = op->s0;
    size_t n = (size_t)s.h * s.w * s.c;
    memcpy(y, x, n * sizeof(float));
    if (op->has_floor) {
        float mx = -INFINITY;
        for (size_t i = 0; i < n; i++)
            if (y[i] > mx) mx = y[i];
        float fl = mx - op->floor_off;
        for (size_t i = 0; i < n; i++)
            if (y[i] < fl) y[i] = fl;
    }
    if (op->mode == BS_NORM_NONE) return;
    if (op->mode == BS_NORM_BAND) {
        /* mean over time (w) of each (band h, channel c) */
        double *mean = scratch;
        for (int32_t i = 0; i < s.h; i++) {
            for (int32_t c = 0; c < s.c; c++) mean[(size_t)i * s.c + c] = 0;
            for (int32_t j = 0; j < s.w; j++)
                for (int32_t c = 0; c < s.c; c++) mean[(size_t)i * s.c + c] += y[((size_t)i * s.w + j) * s.c + c];
            for (int32_t c = 0; c < s.c; c++) {
                float mu = (float)(mean[(size_t)i * s.c + c] / s.w);
                for (int32_t j = 0; j < s.w; j++) y[((size_t)i * s.w + j) * s.c + c] -= mu;
            }
        }
    } else {
        double sum = 0;
        for (size_t i = 0; i < n; i++) sum += y[i];
        float mu = (float)(sum / (double)n);
        for (size_t i = 0; i < n; i++) y[i] -= mu;
    }
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++) sum += y[i];
    double mu = sum / (double)n;
    for (size_t i = 0; i < n; i++) sq += ((double)y[i] - mu) * ((double)y[i] - mu);
    /* torch.std: unbiased; a single element gives nan, as in torch */
    float sd = (float)(n > 1 ? sqrt(sq / (double)(n - 1)) : NAN);
    float den = sd + op->eps;
    for (size_t i = 0; i < n; i++) y[i] = y[i] / den;
}

BS_CLONES static void op_affine(const bs_op *op, const float *x, float *y) {
    size_t px = (size_t)op->s0.h * op->s0.w;
    int32_t c = op->s0.c;
    for (size_t p = 0; p < px; p++)
        for (int32_t k = 0; k < c; k++) y[p * c + k] = x[p * c + k] * op->scale[k] + op->bias[k];
}

static void op_act(const bs_op *op, const float *x, float *y) {
    size_t n = (size_t)op->s0.h * op->s0.w * op->s0.c;
    if (op->mode == BS_ACT_PRELU) { /* torch.nn.PReLU: x >= 0 ? x : slope x (nan stays nan) */
        size_t px = (size_t)op->s0.h * op->s0.w;
        int32_t c = op->s0.c;
        for (size_t p = 0; p < px; p++)
            for (int32_t k = 0; k < c; k++) {
                float v = x[p * c + k];
                y[p * c + k] = v >= 0 ? v : v * op->scale[k];
            }
    } else if (op->mode == BS_ACT_RELU)
        for (size_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : (x[i] == x[i] ? 0.0f : x[i]);
    else
        for (size_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
}

/* float convolution; weights [kh][kw][cin][cout] (transposed at load), double accumulators,
 * vectorized over output channels */
BS_CLONES static void op_conv2d(const bs_op *op, const float *x, float *y, double *acc) {
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    int32_t cin = op->cin, cout = op->cout;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            float *dst = y + ((size_t)oy * so.w + ox) * cout;
            for (int32_t o = 0; o < cout; o++) acc[o] = op->bias ? (double)op->bias[o] : 0.0;
            for (int32_t ky = 0; ky < g->kh; ky++) {
                int64_t iy = (int64_t)oy * g->sh - g->pt + (int64_t)ky * g->dh;
                if (iy < 0 || iy >= si.h) continue;
                for (int32_t kx = 0; kx < g->kw; kx++) {
                    int64_t ix = (int64_t)ox * g->sw - g->pl + (int64_t)kx * g->dw;
                    if (ix < 0 || ix >= si.w) continue;
                    const float *src = x + ((size_t)iy * si.w + (size_t)ix) * cin;
                    const float *wt = op->wf + ((size_t)ky * g->kw + kx) * cin * cout;
                    for (int32_t c = 0; c < cin; c++) {
                        const double xv = src[c];
                        const float *wc = wt + (size_t)c * cout;
                        for (int32_t o = 0; o < cout; o++) acc[o] += xv * (double)wc[o];
                    }
                }
            }
            for (int32_t o = 0; o < cout; o++) dst[o] = (float)acc[o];
        }
}

BS_CLONES static void op_maxpool_f32(const bs_op *op, const float *x, float *y) {
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    int32_t c = si.c;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            float *dst = y + ((size_t)oy * so.w + ox) * c;
            for (int32_t k = 0; k < c; k++) dst[k] = -INFINITY;
            for (int32_t ky = 0; ky < g->kh; ky++) {
                int64_t iy = (int64_t)oy * g->sh - g->pt + ky;
                if (iy < 0 || iy >= si.h) continue;
                for (int32_t kx = 0; kx < g->kw; kx++) {
                    int64_t ix = (int64_t)ox * g->sw - g->pl + kx;
                    if (ix < 0 || ix >= si.w) continue;
                    const float *src = x + ((size_t)iy * si.w + (size_t)ix) * c;
                    for (int32_t k = 0; k < c; k++) {
                        const float v = src[k], m = dst[k];
                        dst[k] = (v > m || v != v) ? v : m; /* NaN propagates, as in torch */
                    }
                }
            }
        }
}

/* max of +-1 values is -1 only when all are -1: with -1 -> bit 1, an AND over the window */
static void op_maxpool_bits(const bs_op *op, const uint64_t *x, uint64_t *y) {
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    int32_t nw = (si.c + 63) / 64;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            uint64_t *dst = y + ((size_t)oy * so.w + ox) * nw;
            for (int32_t k = 0; k < nw; k++) dst[k] = ~(uint64_t)0;
            int any = 0;
            for (int32_t ky = 0; ky < g->kh; ky++) {
                int64_t iy = (int64_t)oy * g->sh - g->pt + ky;
                if (iy < 0 || iy >= si.h) continue;
                for (int32_t kx = 0; kx < g->kw; kx++) {
                    int64_t ix = (int64_t)ox * g->sw - g->pl + kx;
                    if (ix < 0 || ix >= si.w) continue;
                    const uint64_t *src = x + ((size_t)iy * si.w + (size_t)ix) * nw;
                    for (int32_t k = 0; k < nw; k++) dst[k] &= src[k];
                    any = 1;
                }
            }
            if (!any)
                for (int32_t k = 0; k < nw; k++) dst[k] = 0;
        }
}

static void op_gap(const bs_op *op, const float *x, float *y) {
    size_t px = (size_t)op->s0.h * op->s0.w;
    int32_t c = op->s0.c;
    for (int32_t k = 0; k < c; k++) {
        double s = 0;
        for (size_t p = 0; p < px; p++) s += x[p * c + k];
        y[k] = (float)(s / (double)px);
    }
}

static void op_linear(const bs_op *op, const float *x, float *y) {
    size_t nin = (size_t)op->cin;
    for (int32_t o = 0; o < op->cout; o++) {
        const float *w = op->wf + (size_t)o * nin;
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
        size_t i = 0;
        for (; i + 4 <= nin; i += 4) {
            a0 += (double)w[i] * x[i];
            a1 += (double)w[i + 1] * x[i + 1];
            a2 += (double)w[i + 2] * x[i + 2];
            a3 += (double)w[i + 3] * x[i + 3];
        }
        for (; i < nin; i++) a0 += (double)w[i] * x[i];
        y[o] = (float)((a0 + a1) + (a2 + a3) + (op->bias ? op->bias[o] : 0.0));
    }
}

static void op_add(const bs_op *op, const float *a, const float *b, float *y) {
    size_t px = (size_t)op->s0.h * op->s0.w;
    int32_t ca = op->s0.c, cb = op->s1.c;
    for (size_t p = 0; p < px; p++) {
        const float *pa = a + p * ca, *pb = b + p * cb;
        float *py = y + p * ca;
        if (op->mode == BS_ADD_GROUP_MEAN) {
            int32_t gsz = cb / ca;
            for (int32_t k = 0; k < ca; k++) {
                float s = 0;
                for (int32_t j = 0; j < gsz; j++) s += pb[k * gsz + j];
                py[k] = pa[k] + s / (float)gsz;
            }
        } else {
            for (int32_t k = 0; k < ca; k++) py[k] = pa[k] + (k < cb ? pb[k] : 0.0f);
        }
    }
}

/* ---- binary convolution, fast structure ---- */
static size_t a64(size_t x) { return (x + 63) / 64 * 64; }

size_t bs_bitserial_work_bytes(const bs_op *op) {
    if (!op->bser) return 0;
    /* transposed patches [kwords * 64 + 1][256 pixel bits], patch popcounts, count planes, counts of
     * 8 channels, and the count planes of every pair's three segments while the chunks go by
     * (one plane more: the AVX2 kernel keeps the weight-32 plane, even when counts stay below 32) */
    const size_t npairs = ((size_t)op->cout + 1) / 2;
    return a64(BS_XT_BYTES(op->kwords)) + a64(BS_PIXEL_BLOCK * 4) + a64((size_t)op->bser->nplanes * 32) +
           a64(8 * BS_PIXEL_BLOCK * 4) + a64(3 * npairs * ((size_t)op->bser->nplanes + 1) * 32);
}

static size_t block_pixels(const bs_op *op) {
    size_t npix = (size_t)op->so.h * op->so.w;
    return npix < BS_PIXEL_BLOCK ? npix : BS_PIXEL_BLOCK;
}

size_t bs_bconv_scratch_bytes(const bs_op *op) {
    size_t pb = block_pixels(op);
    return a64(pb * op->kwords * 8 + 64) + a64(pb * op->cout * 4) + bs_bitserial_work_bytes(op);
}

/* the patch of output pixel (oy, ox): tap t's channels at bits [t * cin, (t + 1) * cin), zero
 * outside the input. With cin % 64 == 0 every tap is whole words and a kernel row that lies
 * inside the input (dilation 1) is one contiguous run of kw * nwi words. */
static void gather_patch(const bs_op *op, const uint64_t *x, int32_t oy, int32_t ox, uint64_t *dst) {
    const bs_geom *g = &op->g;
    const bs_shape si = op->s0;
    const int32_t nwi = op->nwi, kw4 = op->kwords, cin = op->cin, taps = g->kh * g->kw;
    const int64_t ix0 = (int64_t)ox * g->sw - g->pl;
    if (cin % 64 == 0) {
        int row_inside = g->dw == 1 && ix0 >= 0 && ix0 + g->kw <= si.w;
        for (int32_t ky = 0; ky < g->kh; ky++) {
            int64_t iy = (int64_t)oy * g->sh - g->pt + (int64_t)ky * g->dh;
            uint64_t *d = dst + (size_t)ky * g->kw * nwi;
            if (iy < 0 || iy >= si.h) {
                memset(d, 0, (size_t)g->kw * nwi * 8);
            } else if (row_inside) {
                memcpy(d, x + ((size_t)iy * si.w + (size_t)ix0) * nwi, (size_t)g->kw * nwi * 8);
            } else {
                for (int32_t kx = 0; kx < g->kw; kx++) {
                    int64_t ix = ix0 + (int64_t)kx * g->dw;
                    if (ix < 0 || ix >= si.w)
                        memset(d + (size_t)kx * nwi, 0, (size_t)nwi * 8);
                    else
                        memcpy(d + (size_t)kx * nwi, x + ((size_t)iy * si.w + (size_t)ix) * nwi, (size_t)nwi * 8);
                }
            }
        }
        for (int32_t j = taps * nwi; j < kw4; j++) dst[j] = 0;
        return;
    }
    memset(dst, 0, (size_t)kw4 * 8);
    size_t bit = 0;
    for (int32_t ky = 0; ky < g->kh; ky++) {
        int64_t iy = (int64_t)oy * g->sh - g->pt + (int64_t)ky * g->dh;
        for (int32_t kx = 0; kx < g->kw; kx++, bit += (size_t)cin) {
            int64_t ix = ix0 + (int64_t)kx * g->dw;
            if (iy < 0 || iy >= si.h || ix < 0 || ix >= si.w) continue;
            const uint64_t *src = x + ((size_t)iy * si.w + (size_t)ix) * nwi;
            size_t b = bit, sh = bit % 64;
            for (int32_t j = 0; j < nwi; j++, b += 64) {
                dst[b / 64] |= src[j] << sh;
                if (sh && b / 64 + 1 < (size_t)kw4) dst[b / 64 + 1] |= src[j] >> (64 - sh);
            }
        }
    }
}

static void bconv_fast(const bs_op *op, const bs_kernels *k, const uint64_t *x, void *y, void *scratch) {
    const bs_geom *g = &op->g;
    const bs_shape si = op->s0, so = op->so;
    const int32_t kw4 = op->kwords, cout = op->cout, cin = op->cin;
    const int32_t taps = g->kh * g->kw;
    const int32_t nwo = (cout + 63) / 64;
    const size_t npix = (size_t)so.h * so.w, pb = block_pixels(op);
    uint64_t *patch = (uint64_t *)scratch;
    int32_t *pop = (int32_t *)((char *)scratch + a64(pb * kw4 * 8 + 64));
    void *work = (char *)pop + a64(pb * cout * 4);

    for (size_t p0 = 0; p0 < npix; p0 += pb) {
        int n = (int)(npix - p0 < pb ? npix - p0 : pb);
        for (int i = 0; i < n; i++) {
            size_t p = p0 + (size_t)i;
            gather_patch(op, x, (int32_t)(p / (size_t)so.w), (int32_t)(p % (size_t)so.w), patch + (size_t)i * kw4);
        }
        if (k->bitserial && op->bser && n >= BS_BITSERIAL_MIN_PIXELS)
            k->bitserial(patch, n, op, pop, work);
        else
            k->xor_popcount(patch, n, op->wbits, cout, kw4, pop);

        for (int i = 0; i < n; i++) {
            size_t opix = p0 + (size_t)i;
            int32_t oy = (int32_t)(opix / (size_t)so.w), ox = (int32_t)(opix % (size_t)so.w);
            int32_t *pp = pop + (size_t)i * cout;
            /* valid taps: 0 <= iy0 + ky*dh < h and 0 <= ix0 + kx*dw < w */
            int64_t iy0 = (int64_t)oy * g->sh - g->pt, ix0 = (int64_t)ox * g->sw - g->pl;
            int32_t ky0 = 0, ky1 = g->kh, kx0 = 0, kx1 = g->kw;
            while (ky0 < g->kh && iy0 + (int64_t)ky0 * g->dh < 0) ky0++;
            while (ky1 > ky0 && iy0 + (int64_t)(ky1 - 1) * g->dh >= si.h) ky1--;
            while (kx0 < g->kw && ix0 + (int64_t)kx0 * g->dw < 0) kx0++;
            while (kx1 > kx0 && ix0 + (int64_t)(kx1 - 1) * g->dw >= si.w) kx1--;
            int32_t nvt = (ky1 - ky0) * (kx1 - kx0);
            if (nvt != taps) {
                /* taps in the zero padding were gathered as zero bits and added popcount(w) */
                for (int32_t ky = 0; ky < g->kh; ky++)
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        if (ky >= ky0 && ky < ky1 && kx >= kx0 && kx < kx1) continue;
                        const int32_t *wp = op->wpop + ((size_t)ky * g->kw + kx) * cout;
                        for (int32_t o = 0; o < cout; o++) pp[o] -= wp[o];
                    }
            }
            const int32_t nvalid = nvt * cin;
            if (op->mode == BS_BOUT_BITS) {
                k->bits_out(pp, cout, nvalid, op->thr, op->fsign, (uint64_t *)y + opix * nwo);
            } else {
                float *dst = (float *)y + opix * cout;
                if (op->mode == BS_BOUT_FLOAT)
                    for (int32_t o = 0; o < cout; o++) dst[o] = (float)(nvalid - 2 * pp[o]) * op->scale[o] + op->bias[o];
                else
                    for (int32_t o = 0; o < cout; o++) dst[o] = (float)(nvalid - 2 * pp[o]);
            }
        }
    }
}

void bs_run_op(const bs_model *m, const bs_kernels *k, int i, void *arena) {
    const bs_op *op = &m->ops[i];
    void *y = slot(m, arena, op->out);
    const void *x = op->type == BS_OP_INPUT ? NULL : slot(m, arena, op->in0);
    void *scratch = (char *)arena + m->scratch_off;
    switch (op->type) {
    case BS_OP_INPUT: break; /* done by bs_model_run */
    case BS_OP_FEATURE_NORM: op_feature_norm(op, x, y, scratch); break;
    case BS_OP_AFFINE: op_affine(op, x, y); break;
    case BS_OP_ACT: op_act(op, x, y); break;
    case BS_OP_CONV2D: op_conv2d(op, x, y, scratch); break;
    case BS_OP_PACK: k->pack(x, (size_t)op->s0.h * op->s0.w, op->s0.c, y); break;
    case BS_OP_BCONV2D:
        if (k->reference)
            bs_ref_bconv2d(op, x, y);
        else
            bconv_fast(op, k, x, y, scratch);
        break;
    case BS_OP_MAXPOOL:
        if (op->s0.dtype == BS_BITS) {
            if (k->reference)
                bs_ref_maxpool_bits(op, x, y);
            else
                op_maxpool_bits(op, x, y);
        } else {
            op_maxpool_f32(op, x, y);
        }
        break;
    case BS_OP_GAP: op_gap(op, x, y); break;
    case BS_OP_LINEAR: op_linear(op, x, y); break;
    case BS_OP_ADD: op_add(op, x, slot(m, arena, op->in1), y); break;
    case BS_OP_OUTPUT: break;
    default: break;
    }
}

void bs_model_run(const bs_model *m, const bs_kernels *k, const float *x, void *arena, int stop) {
    if (stop > m->n_ops) stop = m->n_ops;
    for (int i = 0; i < stop; i++) {
        if (m->ops[i].type == BS_OP_INPUT)
            op_input(m, x, slot(m, arena, m->ops[i].out));
        else
            bs_run_op(m, k, i, arena);
    }
}
