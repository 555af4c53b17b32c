/* bsmcu.c: the portable kernels of the generated microcontroller code (see bsmcu.h).
 *
 * Every kernel mirrors the op of the x86 engine (bitsound/engine/model.c) in what it computes and
 * in the order it sums, so that the host build of a generated project gives the engine's numbers.
 * Where the structure differs it is for a 32-bit core with little memory: float convolutions
 * gather one output pixel's patch (zeros in the padding, which add exact zeros to the engine's
 * sums over the valid taps) and finish the output channels one by one, with a following
 * per-channel affine / activation, max-pool and sign applied on the fly, so that the float maps
 * between them never exist; binary convolutions count differing bits over the valid taps with a
 * mask at the border instead of the engine's per-tap weight popcounts.
 */
#include <math.h>
#include <string.h>

#include "bsmcu.h"
#include "bsmcu_impl.h"

uint32_t bsm_xorpop(const uint32_t *a, const uint32_t *b, int32_t n) { return xorpop(a, b, n); }

uint32_t bsm_xorpop_masked(const uint32_t *a, const uint32_t *b, const uint32_t *m, int32_t n) {
    return xorpop_masked(a, b, m, n);
}

/* ---- helpers ---- */

float bsm_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int32_t e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- input, norms, per-channel maps ---- */

void bsm_input(bsm_shape s, const float *chw, float *hwc) {
    for (int32_t ch = 0; ch < s.c; ch++)
        for (int32_t i = 0; i < s.h; i++)
            for (int32_t j = 0; j < s.w; j++) hwc[((size_t)i * s.w + j) * s.c + ch] = chw[((size_t)ch * s.h + i) * s.w + j];
}

void bsm_feature_norm(const bsm_norm_t *p, const float *x, float *y, void *scratch) {
    const bsm_shape s = p->s;
    const size_t n = (size_t)s.h * s.w * s.c;
    if (y != x) memcpy(y, x, n * sizeof(float));
    if (p->has_floor) {
        float mx = -INFINITY;
        for (size_t i = 0; i < n; i++)
            if (y[i] > mx) mx = y[i];
        const float fl = mx - p->floor_off;
        for (size_t i = 0; i < n; i++)
            if (y[i] < fl) y[i] = fl;
    }
    if (p->mode == 0) return;
    if (p->mode == 1) { /* mean over time (w) of each (band h, channel c) */
        double *mean = (double *)scratch;
        for (int32_t i = 0; i < s.h; i++) {
            for (int32_t c = 0; c < s.c; c++) mean[(size_t)i * s.c + c] = 0;
            for (int32_t j = 0; j < s.w; j++)
                for (int32_t c = 0; c < s.c; c++) mean[(size_t)i * s.c + c] += y[((size_t)i * s.w + j) * s.c + c];
            for (int32_t c = 0; c < s.c; c++) {
                const float mu = (float)(mean[(size_t)i * s.c + c] / s.w);
                for (int32_t j = 0; j < s.w; j++) y[((size_t)i * s.w + j) * s.c + c] -= mu;
            }
        }
    } else {
        double sum = 0;
        for (size_t i = 0; i < n; i++) sum += y[i];
        const float mu = (float)(sum / (double)n);
        for (size_t i = 0; i < n; i++) y[i] -= mu;
    }
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++) sum += y[i];
    const double mu = sum / (double)n;
    for (size_t i = 0; i < n; i++) sq += ((double)y[i] - mu) * ((double)y[i] - mu);
    const float sd = (float)(n > 1 ? sqrt(sq / (double)(n - 1)) : NAN); /* torch.std: unbiased */
    const float den = sd + p->eps;
    for (size_t i = 0; i < n; i++) y[i] = y[i] / den;
}

void bsm_normalize(const bsm_norm_t *p, const float *x, float *y, void *scratch) {
    const bsm_shape s = p->s;
    const int32_t mh = p->mode & 1, mw = p->mode & 2, mc = p->mode & 4;
    const size_t GH = mh ? 1 : (size_t)s.h, GW = mw ? 1 : (size_t)s.w, GC = mc ? 1 : (size_t)s.c;
    const double count = (double)(mh ? s.h : 1) * (mw ? s.w : 1) * (mc ? s.c : 1);
    const size_t ng = GH * GW * GC;
    double *mean = (double *)scratch, *var = mean + ng;
    for (size_t q = 0; q < ng; q++) mean[q] = var[q] = 0.0;
#define BSM_GROUP(i, j, k) ((((mh ? 0 : (size_t)(i)) * GW) + (mw ? 0 : (size_t)(j))) * GC + (mc ? 0 : (size_t)(k)))
    for (int32_t i = 0; i < s.h; i++)
        for (int32_t j = 0; j < s.w; j++)
            for (int32_t k = 0; k < s.c; k++) mean[BSM_GROUP(i, j, k)] += x[((size_t)i * s.w + j) * s.c + k];
    for (size_t q = 0; q < ng; q++) mean[q] /= count;
    for (int32_t i = 0; i < s.h; i++)
        for (int32_t j = 0; j < s.w; j++)
            for (int32_t k = 0; k < s.c; k++) {
                const double d = x[((size_t)i * s.w + j) * s.c + k] - mean[BSM_GROUP(i, j, k)];
                var[BSM_GROUP(i, j, k)] += d * d;
            }
    for (size_t q = 0; q < ng; q++) var[q] = 1.0 / sqrt(var[q] / count + (double)p->eps);
    for (int32_t i = 0; i < s.h; i++)
        for (int32_t j = 0; j < s.w; j++)
            for (int32_t k = 0; k < s.c; k++) {
                const size_t q = BSM_GROUP(i, j, k), pi = ((size_t)i * s.w + j) * s.c + k;
                y[pi] = (float)((x[pi] - mean[q]) * var[q]);
            }
#undef BSM_GROUP
}

void bsm_affine(size_t npix, int32_t c, const float *scale, const float *bias, const float *x, float *y) {
    for (size_t p = 0; p < npix; p++)
        for (int32_t k = 0; k < c; k++) y[p * c + k] = x[p * c + k] * scale[k] + bias[k];
}

void bsm_freq_affine(bsm_shape s, const float *scale, const float *bias, const float *x, float *y) {
    for (int32_t i = 0; i < s.h; i++) {
        const float *sc = scale + (size_t)i * s.c, *bi = bias + (size_t)i * s.c;
        for (int32_t j = 0; j < s.w; j++) {
            const size_t p = ((size_t)i * s.w + j) * s.c;
            for (int32_t k = 0; k < s.c; k++) y[p + k] = x[p + k] * sc[k] + bi[k];
        }
    }
}

void bsm_relu(size_t n, const float *x, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = relu1(x[i]);
}
void bsm_tanh(size_t n, const float *x, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
}
void bsm_silu(size_t n, const float *x, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = silu1(x[i]);
}
void bsm_sigmoid(size_t n, const float *x, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = sigmoid1(x[i]);
}
void bsm_prelu(size_t npix, int32_t c, const float *slope, const float *x, float *y) {
    for (size_t p = 0; p < npix; p++)
        for (int32_t k = 0; k < c; k++) {
            const float v = x[p * c + k];
            y[p * c + k] = v >= 0 ? v : v * slope[k];
        }
}

/* ---- float convolution with fused per-channel steps, max-pool and sign ---- */

void bsm_conv(const bsm_conv_t *p, const float *x, void *y, void *scratch) { bsm_conv_body(p, x, y, scratch); }

size_t bsm_conv_scratch(const bsm_conv_t *p) {
    const size_t k = (size_t)p->g.kh * p->g.kw * (p->cin / p->groups), q = p->pool ? (size_t)p->pg.kh * p->pg.kw : 1;
    return bsm_a8(q * k * 4) + bsm_a8((size_t)p->cout * 4);
}

void bsm_pack(size_t npix, int32_t c, const float *x, uint32_t *y) {
    const int32_t nw = (c + 31) / 32;
    for (size_t p = 0; p < npix; p++) {
        const float *src = x + p * (size_t)c;
        for (int32_t k = 0; k < nw; k++) {
            const int32_t j1 = (k + 1) * 32 < c ? (k + 1) * 32 : c;
            uint32_t word = 0;
            for (int32_t j = k * 32; j < j1; j++) word |= (uint32_t)(src[j] < 0.0f) << (j - k * 32);
            y[p * nw + k] = word;
        }
    }
}

/* ---- binary convolution ---- */

void bsm_bconv(const bsm_bconv_t *p, const uint32_t *x, void *y, void *scratch) { bsm_bconv_body(p, x, y, scratch); }

size_t bsm_bconv_scratch(const bsm_bconv_t *p) { return 2 * bsm_a8((size_t)p->kwords * 4); }

/* ---- pools ---- */

/* the window of pool output (oy, ox) clipped to the input: rows [*y0, *y1), columns [*x0, *x1) */
static void pool_window(const bsm_pool_t *p, int32_t oy, int32_t ox, int32_t *y0, int32_t *y1, int32_t *x0,
                        int32_t *x1) {
    const bsm_geom *g = &p->g;
    const int32_t iy = oy * g->sh - g->pt, ix = ox * g->sw - g->pl;
    *y0 = iy < 0 ? 0 : iy;
    *y1 = iy + g->kh < p->si.h ? iy + g->kh : p->si.h;
    *x0 = ix < 0 ? 0 : ix;
    *x1 = ix + g->kw < p->si.w ? ix + g->kw : p->si.w;
}

void bsm_maxpool_f32(const bsm_pool_t *p, const float *x, float *y) {
    const int32_t c = p->si.c;
    for (int32_t oy = 0; oy < p->so.h; oy++)
        for (int32_t ox = 0; ox < p->so.w; ox++) {
            float *dst = y + ((size_t)oy * p->so.w + ox) * c;
            int32_t y0, y1, x0, x1;
            pool_window(p, oy, ox, &y0, &y1, &x0, &x1);
            for (int32_t k = 0; k < c; k++) dst[k] = -INFINITY;
            for (int32_t iy = y0; iy < y1; iy++)
                for (int32_t ix = x0; ix < x1; ix++) {
                    const float *src = x + ((size_t)iy * p->si.w + ix) * c;
                    for (int32_t k = 0; k < c; k++) {
                        const float v = src[k], m = dst[k];
                        dst[k] = (v > m || v != v) ? v : m;
                    }
                }
        }
}

/* the max of +-1 values is -1 only when all are -1: an AND of the sign bits (0 for an empty window) */
void bsm_maxpool_bits(const bsm_pool_t *p, const uint32_t *x, uint32_t *y) {
    const int32_t nw = (p->si.c + 31) / 32;
    for (int32_t oy = 0; oy < p->so.h; oy++)
        for (int32_t ox = 0; ox < p->so.w; ox++) {
            uint32_t *dst = y + ((size_t)oy * p->so.w + ox) * nw;
            int32_t y0, y1, x0, x1;
            pool_window(p, oy, ox, &y0, &y1, &x0, &x1);
            const uint32_t init = y1 > y0 && x1 > x0 ? 0xFFFFFFFFu : 0u;
            for (int32_t k = 0; k < nw; k++) dst[k] = init;
            for (int32_t iy = y0; iy < y1; iy++)
                for (int32_t ix = x0; ix < x1; ix++) {
                    const uint32_t *src = x + ((size_t)iy * p->si.w + ix) * nw;
                    for (int32_t k = 0; k < nw; k++) dst[k] &= src[k];
                }
        }
}

/* torch's AvgPool divisor: the window clipped to the padded input (count_include_pad) or to the input */
void bsm_avgpool(const bsm_pool_t *p, const float *x, float *y) {
    const bsm_geom *g = &p->g;
    const bsm_shape si = p->si;
    const int32_t c = si.c;
    for (int32_t oy = 0; oy < p->so.h; oy++)
        for (int32_t ox = 0; ox < p->so.w; ox++) {
            int32_t hs = oy * g->sh - g->pt, ws = ox * g->sw - g->pl;
            int32_t he = hs + g->kh < si.h + g->pb ? hs + g->kh : si.h + g->pb;
            int32_t we = ws + g->kw < si.w + g->pr ? ws + g->kw : si.w + g->pr;
            const int32_t padded = (he - hs) * (we - ws);
            if (hs < 0) hs = 0;
            if (ws < 0) ws = 0;
            if (he > si.h) he = si.h;
            if (we > si.w) we = si.w;
            const int32_t div = p->count_include_pad ? padded : (he - hs) * (we - ws);
            float *dst = y + ((size_t)oy * p->so.w + ox) * c;
            for (int32_t k = 0; k < c; k++) {
                double acc = 0.0;
                for (int32_t iy = hs; iy < he; iy++)
                    for (int32_t ix = ws; ix < we; ix++) acc += x[((size_t)iy * si.w + ix) * c + k];
                dst[k] = he > hs && we > ws ? (float)(acc / div) : 0.0f;
            }
        }
}

void bsm_global_avg_pool(bsm_shape s, const float *x, float *y) {
    const size_t px = (size_t)s.h * s.w;
    for (int32_t k = 0; k < s.c; k++) {
        double acc = 0;
        for (size_t p = 0; p < px; p++) acc += x[p * s.c + k];
        y[k] = (float)(acc / (double)px);
    }
}

/* ---- dense ---- */

static float linear_weight(const bsm_linear_t *p, int32_t o, int32_t i) {
    if (p->wdtype == BSM_W_F32) return p->w[(size_t)o * p->nin + i];
    if (p->wdtype == BSM_W_F16) return bsm_half_to_float(p->w16[(size_t)o * p->nin + i]);
    const uint32_t *row = p->wsign + (size_t)o * ((p->nin + 31) / 32);
    return (row[i >> 5] >> (i & 31)) & 1u ? -1.0f : 1.0f;
}

void bsm_linear(const bsm_linear_t *p, const float *x, float *y) {
    const int32_t nin = p->nin;
    for (int32_t o = 0; o < p->nout; o++) {
        bsm_acc_t a0 = 0, a1 = 0, a2 = 0, a3 = 0; /* the engine's four interleaved sums */
        int32_t i = 0;
        if (p->wdtype == BSM_W_F32) {
            const float *w = p->w + (size_t)o * nin;
            for (; i + 4 <= nin; i += 4) {
                a0 += (bsm_acc_t)w[i] * x[i];
                a1 += (bsm_acc_t)w[i + 1] * x[i + 1];
                a2 += (bsm_acc_t)w[i + 2] * x[i + 2];
                a3 += (bsm_acc_t)w[i + 3] * x[i + 3];
            }
            for (; i < nin; i++) a0 += (bsm_acc_t)w[i] * x[i];
        } else {
            for (; i + 4 <= nin; i += 4) {
                a0 += (bsm_acc_t)linear_weight(p, o, i) * x[i];
                a1 += (bsm_acc_t)linear_weight(p, o, i + 1) * x[i + 1];
                a2 += (bsm_acc_t)linear_weight(p, o, i + 2) * x[i + 2];
                a3 += (bsm_acc_t)linear_weight(p, o, i + 3) * x[i + 3];
            }
            for (; i < nin; i++) a0 += (bsm_acc_t)linear_weight(p, o, i) * x[i];
        }
        const bsm_acc_t acc = (a0 + a1) + (a2 + a3);
        if (p->wscale)
            y[o] = (float)acc * p->wscale[o] + (p->bias ? p->bias[o] : 0.0f);
        else
            y[o] = (float)(acc + (p->bias ? (bsm_acc_t)p->bias[o] : 0));
    }
}

/* ---- tensor plumbing ---- */

void bsm_add(int32_t mode, bsm_shape sa, bsm_shape sb, const float *a, const float *b, float *y) {
    const int32_t ca = sa.c, cb = sb.c;
    for (int32_t i = 0; i < sa.h; i++)
        for (int32_t j = 0; j < sa.w; j++) {
            const size_t p = (size_t)i * sa.w + j;
            const float *pa = a + p * ca;
            float *py = y + p * ca;
            if (mode == BSM_ADD_SAME) { /* b may broadcast along h or w */
                const float *pb = b + ((size_t)(sb.h == 1 ? 0 : i) * sb.w + (size_t)(sb.w == 1 ? 0 : j)) * cb;
                for (int32_t k = 0; k < ca; k++) py[k] = pa[k] + pb[k];
            } else if (mode == BSM_ADD_GROUP_MEAN) {
                const float *pb = b + p * cb;
                const int32_t gsz = cb / ca;
                for (int32_t k = 0; k < ca; k++) {
                    float s = 0;
                    for (int32_t q = 0; q < gsz; q++) s += pb[k * gsz + q];
                    py[k] = pa[k] + s / (float)gsz;
                }
            } else { /* pad: the shortcut's missing channels are 0 */
                const float *pb = b + p * cb;
                for (int32_t k = 0; k < ca; k++) py[k] = pa[k] + (k < cb ? pb[k] : 0.0f);
            }
        }
}

void bsm_concat(int32_t axis, bsm_shape sa, bsm_shape sb, const float *a, const float *b, float *y) {
    size_t outer, na, nb;
    if (axis == BSM_AXIS_H) {
        outer = 1; na = (size_t)sa.h * sa.w * sa.c; nb = (size_t)sb.h * sb.w * sb.c;
    } else if (axis == BSM_AXIS_W) {
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

void bsm_slice(int32_t axis, int32_t start, int32_t stop, bsm_shape si, const float *x, float *y) {
    size_t outer, run, inner;
    if (axis == BSM_AXIS_H) {
        outer = 1; run = (size_t)si.h; inner = (size_t)si.w * si.c;
    } else if (axis == BSM_AXIS_W) {
        outer = (size_t)si.h; run = (size_t)si.w; inner = (size_t)si.c;
    } else {
        outer = (size_t)si.h * si.w; run = (size_t)si.c; inner = 1;
    }
    const size_t n = (size_t)(stop - start) * inner;
    for (size_t i = 0; i < outer; i++) memcpy(y + i * n, x + i * run * inner + (size_t)start * inner, n * sizeof(float));
}

void bsm_permute(bsm_shape si, bsm_shape so, const int32_t perm[3], const float *x, float *y) {
    const size_t stride[3] = {(size_t)si.w * si.c, (size_t)si.c, 1};
    const size_t s0 = stride[perm[0]], s1 = stride[perm[1]], s2 = stride[perm[2]];
    for (int32_t i = 0; i < so.h; i++)
        for (int32_t j = 0; j < so.w; j++)
            for (int32_t k = 0; k < so.c; k++) *y++ = x[(size_t)i * s0 + (size_t)j * s1 + (size_t)k * s2];
}

/* ---- int8 ---- */

static int8_t quantize1(float x, float scale, int32_t zero) {
    const float v = nearbyintf(x / scale) + (float)zero; /* round half to even */
    if (!(v > -128.0f)) return x != x ? (int8_t)zero : (int8_t)-128;
    if (v > 127.0f) return 127;
    return (int8_t)v;
}

void bsm_quantize(size_t n, float scale, int32_t zero, const float *x, int8_t *y) {
    for (size_t i = 0; i < n; i++) y[i] = quantize1(x[i], scale, zero);
}

void bsm_dequantize(size_t n, float scale, int32_t zero, const int8_t *x, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = (float)((int32_t)x[i] - zero) * scale;
}

static void q_store(const bsm_qconv_t *p, int32_t o, int32_t acc, void *y, size_t idx) {
    float v = (float)acc * p->mult[o];
    if (p->bias) v += p->bias[o];
    if (p->relu && !(v > 0.0f)) v = 0.0f;
    if (p->out_int8)
        ((int8_t *)y)[idx] = quantize1(v, p->out_scale, p->out_zero);
    else
        ((float *)y)[idx] = v;
}

size_t bsm_qconv_scratch(const bsm_qconv_t *p) {
    return bsm_a8((size_t)p->g.kh * p->g.kw * (p->cin / p->groups) * 2);
}

void bsm_qconv(const bsm_qconv_t *p, const int8_t *x, void *y, void *scratch) {
    const bsm_geom *g = &p->g;
    const int32_t cin = p->cin, cout = p->cout, G = p->groups, cg = cin / G, cog = cout / G;
    const size_t kn = (size_t)g->kh * g->kw * cg;
    int16_t *patch = (int16_t *)scratch;
    for (int32_t oy = 0; oy < p->so.h; oy++)
        for (int32_t ox = 0; ox < p->so.w; ox++) {
            const size_t opix = (size_t)oy * p->so.w + ox;
            for (int32_t grp = 0; grp < G; grp++) {
                for (int32_t ky = 0; ky < g->kh; ky++)
                    for (int32_t kx = 0; kx < g->kw; kx++) {
                        const int32_t iy = oy * g->sh - g->pt + ky * g->dh, ix = ox * g->sw - g->pl + kx * g->dw;
                        int16_t *d = patch + ((size_t)ky * g->kw + kx) * cg;
                        if (iy < 0 || iy >= p->si.h || ix < 0 || ix >= p->si.w) {
                            for (int32_t c = 0; c < cg; c++) d[c] = 0; /* torch pads with the zero point */
                        } else {
                            const int8_t *src = x + ((size_t)iy * p->si.w + ix) * cin + (size_t)grp * cg;
                            for (int32_t c = 0; c < cg; c++) d[c] = (int16_t)(src[c] - p->in_zero);
                        }
                    }
                for (int32_t oo = 0; oo < cog; oo++) {
                    const int32_t o = grp * cog + oo;
                    const int8_t *w = p->w + (size_t)o * kn;
                    int32_t acc = 0;
                    for (size_t i = 0; i < kn; i++) acc += (int32_t)patch[i] * (int32_t)w[i];
                    q_store(p, o, acc, y, opix * cout + o);
                }
            }
        }
}

void bsm_qlinear(const bsm_qconv_t *p, const int8_t *x, void *y, void *scratch) {
    const size_t nin = (size_t)p->cin;
    int16_t *patch = (int16_t *)scratch;
    for (size_t i = 0; i < nin; i++) patch[i] = (int16_t)(x[i] - p->in_zero);
    for (int32_t o = 0; o < p->cout; o++) {
        const int8_t *w = p->w + (size_t)o * nin;
        int32_t acc = 0;
        for (size_t i = 0; i < nin; i++) acc += (int32_t)patch[i] * (int32_t)w[i];
        q_store(p, o, acc, y, (size_t)o);
    }
}
