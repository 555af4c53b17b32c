/* bsmcu.h: the portable kernels of bitsound's generated microcontroller code (C99, no allocation).
 *
 * Each kernel is the op of the typed graph (bitsound/graph/opcodes.py) with the semantics of the
 * x86 engine (bitsound/engine/model.c), written for a 32-bit core: activations one example at a
 * time, channels last ([h][w][c]); sign bits in 32-bit words ([h][w][ceil(c / 32)], channel j in bit
 * j % 32 of word j / 32, bit 1 = -1, unused high bits 0). The generated model.c holds the weights as
 * const arrays and calls these kernels in graph order on one static arena.
 *
 * Arithmetic: float32 everywhere the engine uses float. The multiply-accumulate sums of float
 * convolutions and dense layers use bsm_acc_t: double on the host (BSM_ACC_DOUBLE, the engine's
 * arithmetic, so that the host build equals the engine bit for bit) and float on the Cortex-M4F by
 * default (double is emulated in software there). Ungrouped 1-bit-weight convolutions sum in
 * float on every target, as the engine does (its sign-select kernel adds in float32). Reductions (means, variances) use double
 * everywhere, as the engine. Integer parts (binary convolutions, int8) are exact on every target.
 * Build with -ffp-contract=off: a fused multiply-add would round differently from the engine.
 *
 * Popcount (BSM_POPCOUNT): the Cortex-M4 has no popcount instruction. 1 = __builtin_popcount (a
 * libgcc call), 2 = a 256-entry table, 3 = SWAR to byte counts + multiply, 4 = SWAR to byte counts
 * + USADA8 (sum of the four bytes into the accumulator; ARMv7E-M DSP, emulated elsewhere).
 */
#ifndef BSMCU_H
#define BSMCU_H

#include <stddef.h>
#include <stdint.h>

#ifndef BSM_POPCOUNT
#define BSM_POPCOUNT 4
#endif

#if defined(BSM_ACC_DOUBLE)
typedef double bsm_acc_t;
#else
typedef float bsm_acc_t;
#endif

typedef struct {
    int32_t h, w, c;
} bsm_shape;

typedef struct {
    int32_t kh, kw, sh, sw, pt, pl, pb, pr, dh, dw;
} bsm_geom;

/* weight storage of float convolutions and dense layers (opcodes.WDTYPES) */
enum { BSM_W_F32 = 1, BSM_W_F16 = 2, BSM_W_SIGN = 3 };
/* per-channel steps fused after a float convolution (affine, activations) */
enum { BSM_EPI_AFFINE = 1, BSM_EPI_RELU = 2, BSM_EPI_TANH = 3, BSM_EPI_PRELU = 4, BSM_EPI_SILU = 5,
       BSM_EPI_SIGMOID = 6 };
/* binary convolution outputs (opcodes.BOUT_MODES) */
enum { BSM_BOUT_DOT = 0, BSM_BOUT_FLOAT = 1, BSM_BOUT_BITS = 2 };
enum { BSM_ADD_SAME = 0, BSM_ADD_PAD = 1, BSM_ADD_GROUP_MEAN = 2 };
enum { BSM_AXIS_H = 0, BSM_AXIS_W = 1, BSM_AXIS_C = 2 };

typedef struct {
    int32_t kind;       /* BSM_EPI_* */
    const float *scale; /* affine scale or prelu slope, [c] */
    const float *bias;  /* affine bias, [c] */
} bsm_epi;

/* float convolution (conv2d / conv1d as 1 x k) with fused per-channel steps, max-pool and sign */
typedef struct {
    bsm_shape si, sc;           /* input; the convolution's own output */
    bsm_geom g;
    int32_t cin, cout, groups;
    int32_t wdtype;             /* BSM_W_*; weights [cout][kh][kw][cin / groups] */
    const float *w;             /* f32 */
    const uint16_t *w16;        /* f16 (IEEE binary16 bits) */
    const uint32_t *wsign;      /* sign: [cout][kh * kw][ceil(cg / 32)] words, bit 1 = -1 */
    const float *wscale;        /* sign weights: [cout] scale applied after the sum */
    const float *bias;          /* [cout] or NULL */
    int32_t n_epi;
    const bsm_epi *epi;
    int32_t pool;               /* 1: max-pool the outputs with pg (padding pt = pb, pl = pr) */
    bsm_geom pg;
    bsm_shape so;               /* final output */
    int32_t pack;               /* 1: the output is sign bits */
} bsm_conv_t;

/* binary convolution on sign bits */
typedef struct {
    bsm_shape si, so;
    bsm_geom g;
    int32_t cin, cout, groups;
    int32_t kwords;             /* 32-bit words of one output channel's kernel: taps * (cin / groups) bits */
    const uint32_t *w;          /* [cout][kwords]; tap t's channels at bits [t cg, (t + 1) cg) */
    int32_t mode;               /* BSM_BOUT_* */
    const float *scale, *bias;  /* float: dot * scale + bias */
    const int32_t *thr;         /* bits: +1 iff (flip ? -dot : dot) >= thr */
    const uint8_t *flip;
} bsm_bconv_t;

/* pools: 2-D, or 1-D as 1 x k (padding symmetric: pt = pb, pl = pr) */
typedef struct {
    bsm_shape si, so;
    bsm_geom g;
    int32_t count_include_pad;
} bsm_pool_t;

/* dense layer over the hwc-flattened input */
typedef struct {
    int32_t nin, nout, wdtype;
    const float *w;             /* [nout][nin] */
    const uint16_t *w16;
    const uint32_t *wsign;      /* [nout][ceil(nin / 32)] */
    const float *wscale, *bias;
} bsm_linear_t;

/* int8 convolution / dense layer (qconv2d, qconv1d, qlinear) */
typedef struct {
    bsm_shape si, so;
    bsm_geom g;                 /* unused by qlinear */
    int32_t cin, cout, groups;  /* qlinear: nin, nout, 1 */
    const int8_t *w;            /* [cout][kh][kw][cin / groups] or [nout][nin] */
    const float *mult;          /* [cout]: in_scale * weight_scale */
    const float *bias;
    int32_t in_zero, out_int8, relu;
    float out_scale;
    int32_t out_zero;
} bsm_qconv_t;

/* feature_norm and normalize */
typedef struct {
    bsm_shape s;
    int32_t mode, has_floor;    /* feature_norm: opcodes.NORM_MODES; normalize: axes mask */
    float floor_off, eps;
} bsm_norm_t;

/* ---- scratch bytes of the kernels that need working memory ---- */
size_t bsm_conv_scratch(const bsm_conv_t *p);
size_t bsm_bconv_scratch(const bsm_bconv_t *p);
size_t bsm_qconv_scratch(const bsm_qconv_t *p);

/* ---- kernels ---- */
void bsm_input(bsm_shape s, const float *chw, float *hwc);
void bsm_feature_norm(const bsm_norm_t *p, const float *x, float *y, void *scratch);
void bsm_normalize(const bsm_norm_t *p, const float *x, float *y, void *scratch);
void bsm_affine(size_t npix, int32_t c, const float *scale, const float *bias, const float *x, float *y);
void bsm_freq_affine(bsm_shape s, const float *scale, const float *bias, const float *x, float *y);
void bsm_relu(size_t n, const float *x, float *y);
void bsm_tanh(size_t n, const float *x, float *y);
void bsm_silu(size_t n, const float *x, float *y);
void bsm_sigmoid(size_t n, const float *x, float *y);
void bsm_prelu(size_t npix, int32_t c, const float *slope, const float *x, float *y);
void bsm_conv(const bsm_conv_t *p, const float *x, void *y, void *scratch);
void bsm_pack(size_t npix, int32_t c, const float *x, uint32_t *y);
void bsm_bconv(const bsm_bconv_t *p, const uint32_t *x, void *y, void *scratch);
void bsm_maxpool_f32(const bsm_pool_t *p, const float *x, float *y);
void bsm_maxpool_bits(const bsm_pool_t *p, const uint32_t *x, uint32_t *y);
void bsm_avgpool(const bsm_pool_t *p, const float *x, float *y);
void bsm_global_avg_pool(bsm_shape s, const float *x, float *y);
void bsm_linear(const bsm_linear_t *p, const float *x, float *y);
void bsm_add(int32_t mode, bsm_shape sa, bsm_shape sb, const float *a, const float *b, float *y);
void bsm_concat(int32_t axis, bsm_shape sa, bsm_shape sb, const float *a, const float *b, float *y);
void bsm_slice(int32_t axis, int32_t start, int32_t stop, bsm_shape si, const float *x, float *y);
void bsm_permute(bsm_shape si, bsm_shape so, const int32_t perm[3], const float *x, float *y);
void bsm_quantize(size_t n, float scale, int32_t zero, const float *x, int8_t *y);
void bsm_dequantize(size_t n, float scale, int32_t zero, const int8_t *x, float *y);
void bsm_qconv(const bsm_qconv_t *p, const int8_t *x, void *y, void *scratch);
void bsm_qlinear(const bsm_qconv_t *p, const int8_t *x, void *y, void *scratch);

/* popcount of (a xor b) over n words, and of ((a xor b) and m) */
uint32_t bsm_xorpop(const uint32_t *a, const uint32_t *b, int32_t n);
uint32_t bsm_xorpop_masked(const uint32_t *a, const uint32_t *b, const uint32_t *m, int32_t n);
float bsm_half_to_float(uint16_t h);

#endif
