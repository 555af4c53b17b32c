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
    switch (op->mode) {
    case BS_ACT_PRELU: { /* torch.nn.PReLU: x >= 0 ? x : slope x (nan stays nan) */
        size_t px = (size_t)op->s0.h * op->s0.w;
        int32_t c = op->s0.c;
        for (size_t p = 0; p < px; p++)
            for (int32_t k = 0; k < c; k++) {
                float v = x[p * c + k];
                y[p * c + k] = v >= 0 ? v : v * op->scale[k];
            }
        break;
    }
    case BS_ACT_RELU:
        for (size_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : (x[i] == x[i] ? 0.0f : x[i]);
        break;
    case BS_ACT_TANH:
        for (size_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
        break;
    case BS_ACT_SILU: /* x * sigmoid(x) */
        for (size_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
        break;
    default: /* BS_ACT_SIGMOID */
        for (size_t i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
        break;
    }
}

/* the outputs o0 .. o0 + n - 1 of a float conv or dense layer from their double sums (the rule
 * is bs_conv_finish in bsnn.h; the branches are taken once per row here) */
static void finish_row(const bs_op *op, int32_t o0, int32_t n, const double *acc, float *dst) {
    const float *b = op->bias ? op->bias + o0 : NULL;
    if (op->wscale) {
        const float *s = op->wscale + o0;
        for (int32_t o = 0; o < n; o++) dst[o] = (float)acc[o] * s[o] + (b ? b[o] : 0.0f);
    } else if (b) {
        for (int32_t o = 0; o < n; o++) dst[o] = (float)(acc[o] + (double)b[o]);
    } else {
        for (int32_t o = 0; o < n; o++) dst[o] = (float)acc[o];
    }
}

/* the input window of output pixel (oy, ox) along one axis: taps [k0, k1) fall inside */
static void valid_taps(int64_t i0, int32_t k, int32_t d, int32_t n, int32_t *k0, int32_t *k1) {
    int32_t a = 0, b = k;
    while (a < k && i0 + (int64_t)a * d < 0) a++;
    while (b > a && i0 + (int64_t)(b - 1) * d >= n) b--;
    *k0 = a;
    *k1 = b;
}

/* depthwise conv (one input and one output channel per group): weights [kh][kw][c], vectorized
 * over the channels */
BS_CLONES static void conv_depthwise(const bs_op *op, const float *x, float *y, double *acc) {
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    const int32_t c = op->cout;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            int64_t iy0 = (int64_t)oy * g->sh - g->pt, ix0 = (int64_t)ox * g->sw - g->pl;
            int32_t ky0, ky1, kx0, kx1;
            valid_taps(iy0, g->kh, g->dh, si.h, &ky0, &ky1);
            valid_taps(ix0, g->kw, g->dw, si.w, &kx0, &kx1);
            for (int32_t k = 0; k < c; k++) acc[k] = 0.0;
            for (int32_t ky = ky0; ky < ky1; ky++)
                for (int32_t kx = kx0; kx < kx1; kx++) {
                    const float *src = x + ((size_t)(iy0 + (int64_t)ky * g->dh) * si.w + (size_t)(ix0 + (int64_t)kx * g->dw)) * c;
                    const float *wt = op->wf + ((size_t)ky * g->kw + kx) * c;
                    for (int32_t k = 0; k < c; k++) acc[k] += (double)src[k] * (double)wt[k];
                }
            finish_row(op, 0, c, acc, y + ((size_t)oy * so.w + ox) * c);
        }
}

/* ---- 1-bit weights on float inputs: sign-select and add ----
 * McDonnell's one-bit-per-weight layers (seed 002): y[o] = scale[o] * sum x[c] * s[o][c] with
 * s = +-1. No multiplication per tap: each input's sign bit is flipped where the weight is -1 (an
 * XOR with the weight's sign mask) and the result added. The masks, [cout/16][kh][kw][cin][16]
 * words (0 or the float sign bit; outputs past cout get 0), are built from the +-1 weights into
 * scratch at each call (one pass over the weights). Blocks of BS_SIGN_PIX output pixels of a row
 * share each mask load, and 16 outputs of each pixel accumulate in floats held in registers
 * (GCC/Clang vector types; plain loops elsewhere); a tap in the zero padding reads a row of zeros,
 * which adds exactly 0. Every lane adds its terms in the same order (tap by tap, channel by
 * channel) in every clone and in the reference kernel (kernels_ref.c, one output at a time), so
 * every instruction set gives the same bits. Grouped 1-bit convs take the double path below. */
#define BS_SIGN_PIX 6
#define BS_SIGN_LANES 16

static size_t sign_conv_scratch_bytes(const bs_op *op) {
    size_t chunks = ((size_t)op->cout + BS_SIGN_LANES - 1) / BS_SIGN_LANES;
    size_t masks = chunks * op->g.kh * op->g.kw * (size_t)op->cin * BS_SIGN_LANES * 4;
    return (masks + 63) / 64 * 64 + ((size_t)op->cin * 4 + 63) / 64 * 64;
}

#if defined(__GNUC__)
typedef float bs_v8f __attribute__((vector_size(32)));
typedef uint32_t bs_v8u __attribute__((vector_size(32)));

/* a[i][0..15] += x_i[c] with the sign of each lane's weight, for c = 0 .. cin - 1 */
static inline __attribute__((always_inline)) void sign_taps(const float *const *src, const uint32_t *m,
                                                            int32_t cin, float a[BS_SIGN_PIX][BS_SIGN_LANES]) {
    bs_v8f acc[BS_SIGN_PIX][2];
    memcpy(acc, a, sizeof(acc));
    for (int32_t c = 0; c < cin; c++, m += BS_SIGN_LANES) {
        bs_v8u m0, m1;
        memcpy(&m0, m, 32);
        memcpy(&m1, m + 8, 32);
        for (int i = 0; i < BS_SIGN_PIX; i++) {
            uint32_t xb;
            memcpy(&xb, src[i] + c, 4);
            const bs_v8u b = (bs_v8u){0} + xb;
            acc[i][0] += (bs_v8f)(b ^ m0);
            acc[i][1] += (bs_v8f)(b ^ m1);
        }
    }
    memcpy(a, acc, sizeof(acc));
}
#else
static void sign_taps(const float *const *src, const uint32_t *m, int32_t cin,
                      float a[BS_SIGN_PIX][BS_SIGN_LANES]) {
    for (int32_t c = 0; c < cin; c++, m += BS_SIGN_LANES)
        for (int i = 0; i < BS_SIGN_PIX; i++) {
            uint32_t xb;
            memcpy(&xb, src[i] + c, 4);
            for (int l = 0; l < BS_SIGN_LANES; l++) {
                uint32_t u = xb ^ m[l];
                float v;
                memcpy(&v, &u, 4);
                a[i][l] += v;
            }
        }
}
#endif

BS_CLONES static void conv_sign(const bs_op *op, const float *x, float *y, void *scratch) {
    const bs_geom *g = &op->g;
    const bs_shape si = op->s0, so = op->so;
    const int32_t cin = op->cin, cout = op->cout;
    const size_t taps = (size_t)g->kh * g->kw, chunks = ((size_t)cout + BS_SIGN_LANES - 1) / BS_SIGN_LANES;
    uint32_t *mask = (uint32_t *)scratch;
    float *zeros = (float *)((char *)scratch + sign_conv_scratch_bytes(op) - ((size_t)cin * 4 + 63) / 64 * 64);
    for (int32_t c = 0; c < cin; c++) zeros[c] = 0.0f;
    for (size_t k = 0; k < chunks; k++)
        for (size_t t = 0; t < taps; t++)
            for (int32_t c = 0; c < cin; c++) {
                uint32_t *m = mask + ((k * taps + t) * (size_t)cin + (size_t)c) * BS_SIGN_LANES;
                const float *w = op->wf + (t * (size_t)cin + (size_t)c) * (size_t)cout;
                for (int l = 0; l < BS_SIGN_LANES; l++) {
                    size_t o = k * BS_SIGN_LANES + (size_t)l;
                    m[l] = o < (size_t)cout && w[o] < 0 ? 0x80000000u : 0u;
                }
            }
    for (int32_t oy = 0; oy < so.h; oy++) {
        const int64_t iy0 = (int64_t)oy * g->sh - g->pt;
        for (int32_t ox0 = 0; ox0 < so.w; ox0 += BS_SIGN_PIX) {
            const int n = so.w - ox0 < BS_SIGN_PIX ? so.w - ox0 : BS_SIGN_PIX;
            for (size_t k = 0; k < chunks; k++) {
                float a[BS_SIGN_PIX][BS_SIGN_LANES];
                for (int i = 0; i < BS_SIGN_PIX; i++)
                    for (int l = 0; l < BS_SIGN_LANES; l++) a[i][l] = 0.0f;
                for (int32_t ky = 0; ky < g->kh; ky++) {
                    const int64_t iy = iy0 + (int64_t)ky * g->dh;
                    if (iy < 0 || iy >= si.h) continue; /* the whole row of taps is padding */
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        const float *src[BS_SIGN_PIX];
                        for (int i = 0; i < BS_SIGN_PIX; i++) {
                            const int64_t ix = (int64_t)(ox0 + i) * g->sw - g->pl + (int64_t)kx * g->dw;
                            src[i] = i < n && ix >= 0 && ix < si.w ? x + ((size_t)iy * si.w + (size_t)ix) * cin : zeros;
                        }
                        sign_taps(src, mask + ((k * taps + (size_t)ky * g->kw + kx) * (size_t)cin) * BS_SIGN_LANES,
                                  cin, a);
                    }
                }
                const int32_t o0 = (int32_t)k * BS_SIGN_LANES;
                const int32_t no = cout - o0 < BS_SIGN_LANES ? cout - o0 : BS_SIGN_LANES;
                for (int i = 0; i < n; i++) {
                    float *dst = y + ((size_t)oy * so.w + (size_t)(ox0 + i)) * cout + o0;
                    for (int32_t o = 0; o < no; o++) /* bs_conv_finish, with a float sum */
                        dst[o] = a[i][o] * op->wscale[o0 + o] + (op->bias ? op->bias[o0 + o] : 0.0f);
                }
            }
        }
    }
}

/* float convolution (grouped; 1-D as 1 x k); weights [g][kh][kw][cin/g][cout/g] (transposed at
 * load), double accumulators, vectorized over the output channels of a group; 1-bit weights
 * (weight_scale set) of an ungrouped conv go to conv_sign */
BS_CLONES static void op_conv(const bs_op *op, const float *x, float *y, double *acc) {
    if (op->wscale && op->groups == 1) {
        conv_sign(op, x, y, acc);
        return;
    }
    if (op->depthwise) {
        conv_depthwise(op, x, y, acc);
        return;
    }
    const bs_geom *g = &op->g;
    bs_shape si = op->s0, so = op->so;
    const int32_t cin = op->cin, cout = op->cout, G = op->groups, cg = cin / G, cog = cout / G;
    const size_t taps = (size_t)g->kh * g->kw;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            int64_t iy0 = (int64_t)oy * g->sh - g->pt, ix0 = (int64_t)ox * g->sw - g->pl;
            int32_t ky0, ky1, kx0, kx1;
            valid_taps(iy0, g->kh, g->dh, si.h, &ky0, &ky1);
            valid_taps(ix0, g->kw, g->dw, si.w, &kx0, &kx1);
            float *dst = y + ((size_t)oy * so.w + ox) * cout;
            for (int32_t grp = 0; grp < G; grp++) {
                for (int32_t o = 0; o < cog; o++) acc[o] = 0.0;
                for (int32_t ky = ky0; ky < ky1; ky++)
                    for (int32_t kx = kx0; kx < kx1; kx++) {
                        const float *src = x + ((size_t)(iy0 + (int64_t)ky * g->dh) * si.w +
                                                (size_t)(ix0 + (int64_t)kx * g->dw)) * cin + (size_t)grp * cg;
                        const float *wt = op->wf + (((size_t)grp * taps + (size_t)ky * g->kw + kx) * cg) * cog;
                        for (int32_t c = 0; c < cg; c++) {
                            const double xv = src[c];
                            const float *wc = wt + (size_t)c * cog;
                            for (int32_t o = 0; o < cog; o++) acc[o] += xv * (double)wc[o];
                        }
                    }
                finish_row(op, grp * cog, cog, acc, dst + grp * cog);
            }
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

/* the divisor of an average-pool window, as torch's AvgPool: the window clipped to the padded
 * input (count_include_pad) or to the input; *empty when no input element is inside */
void bs_avgpool_window(const bs_op *op, int32_t oy, int32_t ox, int32_t *y0, int32_t *y1, int32_t *x0, int32_t *x1,
                       int32_t *div) {
    const bs_geom *g = &op->g;
    const bs_shape si = op->s0;
    int64_t hs = (int64_t)oy * g->sh - g->pt, ws = (int64_t)ox * g->sw - g->pl;
    int64_t he = hs + g->kh < (int64_t)si.h + g->pb ? hs + g->kh : (int64_t)si.h + g->pb;
    int64_t we = ws + g->kw < (int64_t)si.w + g->pr ? ws + g->kw : (int64_t)si.w + g->pr;
    int64_t padded = (he - hs) * (we - ws);
    if (hs < 0) hs = 0;
    if (ws < 0) ws = 0;
    if (he > si.h) he = si.h;
    if (we > si.w) we = si.w;
    *y0 = (int32_t)hs; *y1 = (int32_t)he; *x0 = (int32_t)ws; *x1 = (int32_t)we;
    *div = (int32_t)(op->aux ? padded : (he - hs) * (we - ws));
}

BS_CLONES static void op_avgpool(const bs_op *op, const float *x, float *y, double *acc) {
    bs_shape si = op->s0, so = op->so;
    int32_t c = si.c;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            float *dst = y + ((size_t)oy * so.w + ox) * c;
            int32_t y0, y1, x0, x1, div;
            bs_avgpool_window(op, oy, ox, &y0, &y1, &x0, &x1, &div);
            for (int32_t k = 0; k < c; k++) acc[k] = 0.0;
            for (int32_t iy = y0; iy < y1; iy++)
                for (int32_t ix = x0; ix < x1; ix++) {
                    const float *src = x + ((size_t)iy * si.w + (size_t)ix) * c;
                    for (int32_t k = 0; k < c; k++) acc[k] += src[k];
                }
            for (int32_t k = 0; k < c; k++) dst[k] = y1 > y0 && x1 > x0 ? (float)(acc[k] / div) : 0.0f;
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
        y[o] = bs_conv_finish(op, o, (a0 + a1) + (a2 + a3));
    }
}

static void op_add(const bs_op *op, const float *a, const float *b, float *y) {
    const bs_shape sa = op->s0, sb = op->s1;
    const int32_t ca = sa.c, cb = sb.c;
    for (int32_t i = 0; i < sa.h; i++)
        for (int32_t j = 0; j < sa.w; j++) {
            size_t p = (size_t)i * sa.w + j;
            const float *pa = a + p * ca;
            float *py = y + p * ca;
            if (op->mode == BS_ADD_SAME) { /* in1 may broadcast along h or w */
                const float *pb = b + ((size_t)(sb.h == 1 ? 0 : i) * sb.w + (size_t)(sb.w == 1 ? 0 : j)) * cb;
                for (int32_t k = 0; k < ca; k++) py[k] = pa[k] + pb[k];
            } else if (op->mode == BS_ADD_GROUP_MEAN) {
                const float *pb = b + p * cb;
                int32_t gsz = cb / ca;
                for (int32_t k = 0; k < ca; k++) {
                    float s = 0;
                    for (int32_t q = 0; q < gsz; q++) s += pb[k * gsz + q];
                    py[k] = pa[k] + s / (float)gsz;
                }
            } else { /* BS_ADD_PAD: the shortcut's missing channels are 0 */
                const float *pb = b + p * cb;
                for (int32_t k = 0; k < ca; k++) py[k] = pa[k] + (k < cb ? pb[k] : 0.0f);
            }
        }
}

/* concatenation and slicing of channels-last maps: runs of contiguous floats */
static void op_concat(const bs_op *op, const float *a, const float *b, float *y) {
    const bs_shape sa = op->s0, sb = op->s1;
    /* outer: how many runs; each run copies na floats of a then nb floats of b */
    size_t outer, na, nb;
    if (op->aux == BS_AXIS_H) {
        outer = 1; na = (size_t)sa.h * sa.w * sa.c; nb = (size_t)sb.h * sb.w * sb.c;
    } else if (op->aux == BS_AXIS_W) {
        outer = (size_t)sa.h; na = (size_t)sa.w * sa.c; nb = (size_t)sb.w * sb.c;
    } else {
        outer = (size_t)sa.h * sa.w; na = (size_t)sa.c; nb = (size_t)sb.c;
    }
    for (size_t i = 0; i < outer; i++) {
        memcpy(y, a + i * na, na * sizeof(float));
        memcpy(y + na, b + i * nb, nb * sizeof(float));
        y += na + nb;
    }
}

static void op_slice(const bs_op *op, const float *x, float *y) {
    const bs_shape si = op->s0;
    size_t outer, run, inner; /* per outer index: skip start * inner, copy (stop - start) * inner */
    if (op->aux == BS_AXIS_H) {
        outer = 1; run = (size_t)si.h; inner = (size_t)si.w * si.c;
    } else if (op->aux == BS_AXIS_W) {
        outer = (size_t)si.h; run = (size_t)si.w; inner = (size_t)si.c;
    } else {
        outer = (size_t)si.h * si.w; run = (size_t)si.c; inner = 1;
    }
    size_t n = (size_t)(op->stop - op->start) * inner;
    for (size_t i = 0; i < outer; i++) memcpy(y + i * n, x + i * run * inner + (size_t)op->start * inner, n * sizeof(float));
}

/* y[h][w][c] = x * scale[h][c] + bias[h][c] */
BS_CLONES static void op_freq_affine(const bs_op *op, const float *x, float *y) {
    const bs_shape s = op->s0;
    for (int32_t i = 0; i < s.h; i++) {
        const float *sc = op->scale + (size_t)i * s.c, *bi = op->bias + (size_t)i * s.c;
        for (int32_t j = 0; j < s.w; j++) {
            size_t p = ((size_t)i * s.w + j) * s.c;
            for (int32_t k = 0; k < s.c; k++) y[p + k] = x[p + k] * sc[k] + bi[k];
        }
    }
}

/* (x - mean) / sqrt(var + eps) over the axes of the mask (1 h, 2 w, 4 c), biased variance, for
 * every index of the other axes; stats holds two doubles per such index */
static void op_normalize(const bs_op *op, const float *x, float *y, double *stats) {
    const bs_shape s = op->s0;
    const int mh = op->mode & 1, mw = op->mode & 2, mc = op->mode & 4;
    const size_t GH = mh ? 1 : (size_t)s.h, GW = mw ? 1 : (size_t)s.w, GC = mc ? 1 : (size_t)s.c;
    const double count = (double)(mh ? s.h : 1) * (mw ? s.w : 1) * (mc ? s.c : 1);
    const size_t ng = GH * GW * GC;
    double *mean = stats, *var = stats + ng;
    for (size_t q = 0; q < ng; q++) mean[q] = var[q] = 0.0;
#define BS_GROUP(i, j, k) ((((mh ? 0 : (size_t)(i)) * GW) + (mw ? 0 : (size_t)(j))) * GC + (mc ? 0 : (size_t)(k)))
    for (int32_t i = 0; i < s.h; i++)
        for (int32_t j = 0; j < s.w; j++)
            for (int32_t k = 0; k < s.c; k++) mean[BS_GROUP(i, j, k)] += x[((size_t)i * s.w + j) * s.c + k];
    for (size_t q = 0; q < ng; q++) mean[q] /= count;
    for (int32_t i = 0; i < s.h; i++)
        for (int32_t j = 0; j < s.w; j++)
            for (int32_t k = 0; k < s.c; k++) {
                double d = x[((size_t)i * s.w + j) * s.c + k] - mean[BS_GROUP(i, j, k)];
                var[BS_GROUP(i, j, k)] += d * d;
            }
    for (size_t q = 0; q < ng; q++) var[q] = 1.0 / sqrt(var[q] / count + (double)op->eps);
    for (int32_t i = 0; i < s.h; i++)
        for (int32_t j = 0; j < s.w; j++)
            for (int32_t k = 0; k < s.c; k++) {
                size_t q = BS_GROUP(i, j, k), p = ((size_t)i * s.w + j) * s.c + k;
                y[p] = (float)((x[p] - mean[q]) * var[q]);
            }
#undef BS_GROUP
}

/* output axis a is input axis perm[a] */
static void op_permute(const bs_op *op, const float *x, float *y) {
    const bs_shape si = op->s0, so = op->so;
    size_t stride_in[3] = {(size_t)si.w * si.c, (size_t)si.c, 1};
    size_t s0 = stride_in[op->perm[0]], s1 = stride_in[op->perm[1]], s2 = stride_in[op->perm[2]];
    for (int32_t i = 0; i < so.h; i++)
        for (int32_t j = 0; j < so.w; j++)
            for (int32_t k = 0; k < so.c; k++) *y++ = x[(size_t)i * s0 + (size_t)j * s1 + (size_t)k * s2];
}

/* ---- int8 ---- */
int8_t bs_quantize_value(float x, float scale, int32_t zero) {
    float v = nearbyintf(x / scale) + (float)zero; /* round half to even, as torch.quantize_per_tensor */
    if (!(v > -128.0f)) return x != x ? (int8_t)zero : (int8_t)-128;
    if (v > 127.0f) return 127;
    return (int8_t)v;
}

float bs_requant_float(const bs_op *op, int32_t o, int32_t acc) {
    float v = (float)acc * op->wscale[o];
    if (op->bias) v += op->bias[o];
    if (op->aux && !(v > 0.0f)) v = 0.0f;
    return v;
}

static void q_store(const bs_op *op, int32_t o, int32_t acc, void *y, size_t idx) {
    float v = bs_requant_float(op, o, acc);
    if (op->mode == BS_QOUT_INT8)
        ((int8_t *)y)[idx] = bs_quantize_value(v, op->oscale, op->ozero);
    else
        ((float *)y)[idx] = v;
}

static void op_quantize(const bs_op *op, const float *x, int8_t *y) {
    size_t n = (size_t)op->s0.h * op->s0.w * op->s0.c;
    for (size_t i = 0; i < n; i++) y[i] = bs_quantize_value(x[i], op->qscale, op->qzero);
}

static void op_dequantize(const bs_op *op, const int8_t *x, float *y) {
    size_t n = (size_t)op->s0.h * op->s0.w * op->s0.c;
    for (size_t i = 0; i < n; i++) y[i] = (float)((int32_t)x[i] - op->qzero) * op->qscale;
}

/* int8 conv: per output pixel and group, the patch (x - zero) as int16 (0 in the padding, which
 * torch fills with the zero point), then an int32 dot with each output channel's weights */
BS_CLONES static void op_qconv(const bs_op *op, const int8_t *x, void *y, int16_t *patch) {
    const bs_geom *g = &op->g;
    const bs_shape si = op->s0, so = op->so;
    const int32_t cin = op->cin, cout = op->cout, G = op->groups, cg = cin / G, cog = cout / G;
    const size_t taps = (size_t)g->kh * g->kw, kn = taps * (size_t)cg;
    for (int32_t oy = 0; oy < so.h; oy++)
        for (int32_t ox = 0; ox < so.w; ox++) {
            const size_t opix = (size_t)oy * so.w + ox;
            for (int32_t grp = 0; grp < G; grp++) {
                for (int32_t ky = 0; ky < g->kh; ky++)
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        int64_t iy = (int64_t)oy * g->sh - g->pt + (int64_t)ky * g->dh;
                        int64_t ix = (int64_t)ox * g->sw - g->pl + (int64_t)kx * g->dw;
                        int16_t *d = patch + ((size_t)ky * g->kw + kx) * cg;
                        if (iy < 0 || iy >= si.h || ix < 0 || ix >= si.w) {
                            memset(d, 0, (size_t)cg * sizeof(int16_t));
                        } else {
                            const int8_t *src = x + ((size_t)iy * si.w + (size_t)ix) * cin + (size_t)grp * cg;
                            for (int32_t c = 0; c < cg; c++) d[c] = (int16_t)(src[c] - op->qzero);
                        }
                    }
                for (int32_t oo = 0; oo < cog; oo++) {
                    const int32_t o = grp * cog + oo;
                    const int8_t *w = op->wq + (size_t)o * kn;
                    int32_t acc = 0;
                    for (size_t i = 0; i < kn; i++) acc += (int32_t)patch[i] * (int32_t)w[i];
                    q_store(op, o, acc, y, opix * cout + o);
                }
            }
        }
}

BS_CLONES static void op_qlinear(const bs_op *op, const int8_t *x, void *y, int16_t *patch) {
    const size_t nin = (size_t)op->cin;
    for (size_t i = 0; i < nin; i++) patch[i] = (int16_t)(x[i] - op->qzero);
    for (int32_t o = 0; o < op->cout; o++) {
        const int8_t *w = op->wq + (size_t)o * nin;
        int32_t acc = 0;
        for (size_t i = 0; i < nin; i++) acc += (int32_t)patch[i] * (int32_t)w[i];
        q_store(op, o, acc, y, (size_t)o);
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

int bs_op_run_form(const bs_op *op, const bs_kernels *k) {
    int f = op->form;
    if (f == BS_FORM_SLICE && !(op->slc && k->bitslice)) f = BS_FORM_SERIAL;
    if (f == BS_FORM_SERIAL && !(op->bser && k->bitserial)) f = BS_FORM_WORD;
    return f;
}

/* output pixels p0 .. p0 + n - 1 of a binary conv, n <= the block: gather their patches, count
 * (bit-serial for a large enough block in the serial form), and finish */
static void bconv_pixels(const bs_op *op, const bs_kernels *k, int form, const uint64_t *x, void *y,
                         void *scratch, size_t p0, int n) {
    const bs_geom *g = &op->g;
    const bs_shape si = op->s0, so = op->so;
    const int32_t kw4 = op->kwords, cout = op->cout, cin = op->cin;
    const int32_t taps = g->kh * g->kw;
    const int32_t nwo = (cout + 63) / 64;
    const size_t pb = block_pixels(op);
    uint64_t *patch = (uint64_t *)scratch;
    int32_t *pop = (int32_t *)((char *)scratch + a64(pb * kw4 * 8 + 64));
    void *work = (char *)pop + a64(pb * cout * 4);
    for (int i = 0; i < n; i++) {
        size_t p = p0 + (size_t)i;
        gather_patch(op, x, (int32_t)(p / (size_t)so.w), (int32_t)(p % (size_t)so.w), patch + (size_t)i * kw4);
    }
    if (form == BS_FORM_SERIAL && n >= BS_BITSERIAL_MIN_PIXELS)
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

/* one run of a binary conv, cut into tasks that write disjoint outputs: blocks of output pixels
 * (word / serial forms) or of 64 VW positions (slice form). Thread tid works in scratch0 (tid 0)
 * or in its pool scratch; the slice form's input planes are shared. */
typedef struct {
    const bs_op *op;
    const bs_kernels *k;
    bs_pool *pool;
    int form;
    const uint64_t *x;
    void *y;
    const uint64_t *planes;
    void *scratch0;
    size_t pb, npix;
} bconv_job;

static void bconv_task(void *ctx, int task, int tid) {
    const bconv_job *j = (const bconv_job *)ctx;
    void *scratch = tid == 0 ? j->scratch0 : bs_pool_scratch(j->pool, tid);
    if (j->form == BS_FORM_SLICE) {
        j->k->bitslice(j->op, j->planes, (int64_t)task * 64 * j->k->slice_words, j->y, scratch);
        return;
    }
    size_t p0 = (size_t)task * j->pb;
    int n = (int)(j->npix - p0 < j->pb ? j->npix - p0 : j->pb);
    bconv_pixels(j->op, j->k, j->form, j->x, j->y, scratch, p0, n);
}

/* scratch of one thread's tasks: room for the forms the op has structures for (a table without
 * the chosen form's kernel runs the next form down in the same memory) */
static size_t bconv_thread_bytes(const bs_op *op) {
    size_t a = bs_bconv_scratch_bytes(op), b = bs_slice_work_bytes(op);
    return a > b ? a : b;
}

static void bconv_fast(const bs_op *op, const bs_kernels *k, bs_pool *pool, const uint64_t *x, void *y,
                       void *scratch) {
    bconv_job j;
    j.op = op, j.k = k, j.pool = pool, j.form = bs_op_run_form(op, k), j.x = x, j.y = y;
    j.npix = (size_t)op->so.h * op->so.w;
    j.pb = block_pixels(op);
    j.planes = (const uint64_t *)scratch;
    j.scratch0 = (char *)scratch + (j.form == BS_FORM_SLICE ? bs_slice_planes_bytes(op) : 0);
    int ntasks;
    if (j.form == BS_FORM_SLICE) {
        const size_t bw = (size_t)64 * k->slice_words;
        k->slice_planes(op, x, (uint64_t *)scratch);
        ntasks = (int)(((size_t)op->so.h * op->slc->S + bw - 1) / bw);
    } else {
        ntasks = (int)((j.npix + j.pb - 1) / j.pb);
    }
    if (pool && bs_pool_threads(pool) > 1 && ntasks > 1) {
        bs_pool_run(pool, ntasks, bconv_task, &j);
    } else {
        for (int t = 0; t < ntasks; t++) bconv_task(&j, t, 0);
    }
}

/* a grouped binary conv runs group by group: the group's input channels are copied into a packed
 * map of their own, the group runs as an ungrouped conv (without a bit-serial plan), and its
 * outputs are copied into place */
static bs_op group_op(const bs_op *op, int32_t grp) {
    const int32_t G = op->groups, cg = op->cin / G, cog = op->cout / G;
    const size_t taps = (size_t)op->g.kh * op->g.kw;
    bs_op s = *op;
    s.groups = 1;
    s.cin = cg;
    s.cout = cog;
    s.s0.c = cg;
    s.so.c = cog;
    s.bser = NULL;
    s.slc = NULL;
    s.form = BS_FORM_WORD;
    s.wbits = op->wbits + (size_t)grp * cog * op->kwords;
    s.wpop = op->wpop + (size_t)grp * taps * cog;
    if (op->thr) s.thr = op->thr + (size_t)grp * cog;
    if (op->flip) s.flip = op->flip + (size_t)grp * cog;
    if (op->fsign) s.fsign = op->fsign + (size_t)grp * cog;
    if (op->scale) s.scale = op->scale + (size_t)grp * cog;
    if (op->bias) s.bias = op->bias + (size_t)grp * cog;
    return s;
}

/* n bits of src starting at bit `from` -> dst words from bit 0 (the rest of the last word 0) */
static void extract_bits(const uint64_t *src, size_t src_words, size_t from, size_t n, uint64_t *dst) {
    for (size_t j = 0; j * 64 < n; j++) {
        size_t b = from + j * 64, w = b / 64, sh = b % 64;
        uint64_t v = src[w] >> sh;
        if (sh && w + 1 < src_words) v |= src[w + 1] << (64 - sh);
        if (n - j * 64 < 64) v &= ((uint64_t)1 << (n - j * 64)) - 1;
        dst[j] = v;
    }
}

/* OR the n-bit value words of src into dst from bit `at` (dst's bits there are 0) */
static void insert_bits(const uint64_t *src, size_t n, uint64_t *dst, size_t dst_words, size_t at) {
    for (size_t j = 0; j * 64 < n; j++) {
        size_t b = at + j * 64, w = b / 64, sh = b % 64;
        dst[w] |= src[j] << sh;
        if (sh && w + 1 < dst_words) dst[w + 1] |= src[j] >> (64 - sh);
    }
}

static size_t grouped_io_bytes(const bs_op *op, size_t *in_bytes) {
    const int32_t G = op->groups, cg = op->cin / G, cog = op->cout / G;
    const size_t npix = (size_t)op->so.h * op->so.w, nwg = ((size_t)cg + 63) / 64, nwog = ((size_t)cog + 63) / 64;
    const size_t per = (size_t)cog * 4 > nwog * 8 ? (size_t)cog * 4 : nwog * 8;
    *in_bytes = a64((size_t)op->s0.h * op->s0.w * nwg * 8);
    return *in_bytes + a64(npix * per);
}

static void bconv_grouped(const bs_op *op, const bs_kernels *k, const uint64_t *x, void *y, void *scratch) {
    const int32_t G = op->groups, cg = op->cin / G, cog = op->cout / G;
    const size_t npix_in = (size_t)op->s0.h * op->s0.w, npix = (size_t)op->so.h * op->so.w;
    const size_t nwi = ((size_t)op->cin + 63) / 64, nwg = ((size_t)cg + 63) / 64;
    const size_t nwo = ((size_t)op->cout + 63) / 64, nwog = ((size_t)cog + 63) / 64;
    size_t in_bytes, io = grouped_io_bytes(op, &in_bytes);
    uint64_t *xin = (uint64_t *)scratch;
    void *yg = (char *)scratch + in_bytes;
    void *work = (char *)scratch + io;
    if (op->mode == BS_BOUT_BITS) memset(y, 0, npix * nwo * 8);
    for (int32_t grp = 0; grp < G; grp++) {
        for (size_t p = 0; p < npix_in; p++)
            extract_bits(x + p * nwi, nwi, (size_t)grp * cg, (size_t)cg, xin + p * nwg);
        bs_op sub = group_op(op, grp);
        bconv_fast(&sub, k, NULL, xin, yg, work);
        for (size_t p = 0; p < npix; p++) {
            if (op->mode == BS_BOUT_BITS)
                insert_bits((uint64_t *)yg + p * nwog, (size_t)cog, (uint64_t *)y + p * nwo, nwo, (size_t)grp * cog);
            else
                memcpy((float *)y + p * op->cout + (size_t)grp * cog, (float *)yg + p * cog, (size_t)cog * 4);
        }
    }
}

size_t bs_op_scratch_bytes(const bs_op *op) {
    switch (op->type) {
    case BS_OP_BINARY_CONV2D:
    case BS_OP_BINARY_CONV1D: {
        /* the slice planes (shared by the threads), then the calling thread's blocks */
        if (op->groups == 1) return bs_slice_planes_bytes(op) + bconv_thread_bytes(op);
        size_t in_bytes;
        bs_op sub = group_op(op, 0);
        return grouped_io_bytes(op, &in_bytes) + bs_bconv_scratch_bytes(&sub);
    }
    case BS_OP_FEATURE_NORM: return a64((size_t)op->so.h * op->so.c * 8);
    case BS_OP_CONV2D:
    case BS_OP_CONV1D:
        if (op->wscale && op->groups == 1) return sign_conv_scratch_bytes(op);
        /* fall through */
    case BS_OP_AVGPOOL2D:
    case BS_OP_AVGPOOL1D: return a64((size_t)(op->cout > op->s0.c ? op->cout : op->s0.c) * 8);
    case BS_OP_QCONV2D:
    case BS_OP_QCONV1D: return a64((size_t)op->g.kh * op->g.kw * (size_t)(op->cin / op->groups) * 2);
    case BS_OP_QLINEAR: return a64((size_t)op->cin * 2);
    case BS_OP_NORMALIZE: {
        const bs_shape s = op->s0;
        size_t ng = (size_t)(op->mode & 1 ? 1 : s.h) * (op->mode & 2 ? 1 : s.w) * (op->mode & 4 ? 1 : s.c);
        return a64(2 * ng * 8);
    }
    default: return 0;
    }
}

size_t bs_model_thread_bytes(const bs_model *m) {
    size_t most = 0;
    for (int i = 0; i < m->n_ops; i++) {
        const bs_op *op = &m->ops[i];
        if ((op->type == BS_OP_BINARY_CONV2D || op->type == BS_OP_BINARY_CONV1D) && op->groups == 1) {
            size_t b = bconv_thread_bytes(op);
            if (b > most) most = b;
        }
    }
    return most;
}

static void run_binary_conv(const bs_op *op, const bs_kernels *k, bs_pool *pool, const uint64_t *x, void *y,
                            void *scratch) {
    if (k->reference)
        bs_ref_bconv2d(op, x, y);
    else if (op->groups == 1)
        bconv_fast(op, k, pool, x, y, scratch);
    else
        bconv_grouped(op, k, x, y, scratch);
}

void bs_run_op(const bs_model *m, const bs_kernels *k, int i, void *arena) { bs_run_op_pool(m, k, NULL, i, arena); }

void bs_run_op_pool(const bs_model *m, const bs_kernels *k, bs_pool *pool, int i, void *arena) {
    const bs_op *op = &m->ops[i];
    void *y = slot(m, arena, op->out);
    const void *x = op->type == BS_OP_INPUT ? NULL : slot(m, arena, op->in0);
    void *scratch = (char *)arena + m->scratch_off;
    switch (op->type) {
    case BS_OP_INPUT: break; /* done by bs_model_run */
    case BS_OP_FEATURE_NORM: op_feature_norm(op, x, y, scratch); break;
    case BS_OP_AFFINE: op_affine(op, x, y); break;
    case BS_OP_ACTIVATION: op_act(op, x, y); break;
    case BS_OP_CONV2D:
    case BS_OP_CONV1D:
        if (k->reference)
            bs_ref_conv2d(op, x, y);
        else
            op_conv(op, x, y, scratch);
        break;
    case BS_OP_PACK: k->pack(x, (size_t)op->s0.h * op->s0.w, op->s0.c, y); break;
    case BS_OP_BINARY_CONV2D:
    case BS_OP_BINARY_CONV1D: run_binary_conv(op, k, pool, x, y, scratch); break;
    case BS_OP_MAXPOOL2D:
    case BS_OP_MAXPOOL1D:
        if (op->s0.dtype == BS_BITS) {
            if (k->reference)
                bs_ref_maxpool_bits(op, x, y);
            else
                op_maxpool_bits(op, x, y);
        } else {
            op_maxpool_f32(op, x, y);
        }
        break;
    case BS_OP_AVGPOOL2D:
    case BS_OP_AVGPOOL1D:
        if (k->reference)
            bs_ref_avgpool(op, x, y);
        else
            op_avgpool(op, x, y, scratch);
        break;
    case BS_OP_GLOBAL_AVG_POOL: op_gap(op, x, y); break;
    case BS_OP_LINEAR: op_linear(op, x, y); break;
    case BS_OP_ADD: op_add(op, x, slot(m, arena, op->in1), y); break;
    case BS_OP_CONCAT: op_concat(op, x, slot(m, arena, op->in1), y); break;
    case BS_OP_SLICE: op_slice(op, x, y); break;
    case BS_OP_FREQ_AFFINE: op_freq_affine(op, x, y); break;
    case BS_OP_NORMALIZE: op_normalize(op, x, y, scratch); break;
    case BS_OP_PERMUTE: op_permute(op, x, y); break;
    case BS_OP_QUANTIZE: op_quantize(op, x, y); break;
    case BS_OP_DEQUANTIZE: op_dequantize(op, x, y); break;
    case BS_OP_QCONV2D:
    case BS_OP_QCONV1D:
        if (k->reference)
            bs_ref_qconv2d(op, x, y);
        else
            op_qconv(op, x, y, scratch);
        break;
    case BS_OP_QLINEAR: op_qlinear(op, x, y, scratch); break;
    case BS_OP_OUTPUT: break;
    default: break;
    }
}

void bs_model_run(const bs_model *m, const bs_kernels *k, const float *x, void *arena, int stop) {
    bs_model_run_pool(m, k, NULL, x, arena, stop);
}

void bs_model_run_pool(const bs_model *m, const bs_kernels *k, bs_pool *pool, const float *x, void *arena,
                       int stop) {
    if (stop > m->n_ops) stop = m->n_ops;
    for (int i = 0; i < stop; i++) {
        if (m->ops[i].type == BS_OP_INPUT)
            op_input(m, x, slot(m, arena, m->ops[i].out));
        else
            bs_run_op_pool(m, k, pool, i, arena);
    }
}
