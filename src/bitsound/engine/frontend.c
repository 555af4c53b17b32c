/* frontend.c: the audio front ends in portable C99 (see frontend.h for the semantics). */
#include <math.h>
#include <string.h>

#include "frontend.h"
#if BSFE_LANES > 1
#include <xmmintrin.h> /* SSE, which every x86-64 has: loading the frames into lanes */
#endif

/* A generated project may leave out what its recipe does not use (a smaller image); the engine
 * compiles everything. */
#ifdef BSM_CONFIG
#include "bsm_config.h"
#endif
#ifndef BSFE_WITH_POWF
#define BSFE_WITH_POWF 1
#endif
#ifndef BSFE_WITH_OTSU
#define BSFE_WITH_OTSU 1
#endif
#ifndef BSFE_WITH_MEAN
#define BSFE_WITH_MEAN 1
#endif

static size_t a8(size_t n) { return (n + 7) / 8 * 8; }

/* ---- frames in lanes ----
 * With BSFE_LANES > 1 (frontend.h) the STFT runs that many consecutive frames at once, frame
 * t + l in lane l of a GCC vector: every lane performs exactly the scalar code's operations in
 * the same order, so each frame gets the same bits as with BSFE_LANES 1. A point of the FFT
 * buffer is then a vector of BSFE_LANES floats; with one lane it is a float. */
#if BSFE_LANES > 1
typedef float fe_v __attribute__((vector_size(4 * BSFE_LANES)));
typedef uint32_t fe_vu __attribute__((vector_size(4 * BSFE_LANES)));
typedef int32_t fe_vi __attribute__((vector_size(4 * BSFE_LANES)));
#else
typedef float fe_v;
#endif

/* the FFT buffer in work: n_fft / 2 + 1 points, aligned for the vector loads */
static fe_v *lanes_buffer(void *p) {
#if BSFE_LANES > 1
    return (fe_v *)(((uintptr_t)p + sizeof(fe_v) - 1) / sizeof(fe_v) * sizeof(fe_v));
#else
    return (fe_v *)p;
#endif
}

size_t bsfe_out_floats(const bsfe_spec *s) {
    if (s->kind == BSFE_LOGMEL) return (size_t)s->n_channels * s->n_mels * s->n_frames;
    if (s->kind == BSFE_BINARY_IMAGE) return (size_t)s->n_channels * s->out_h * s->out_w;
    return (size_t)s->n_channels * s->n_samples;
}

/* work: [image: n_mels x n_frames][resize rows: rs_rows x out_w][fft: n_fft (also the median's
 * copy of a band)] for the binary image; [fft] for the log-mel */
static size_t image_bytes(const bsfe_spec *s) { return a8((size_t)s->n_mels * s->n_frames * 4); }
static size_t rows_bytes(const bsfe_spec *s) { return a8((size_t)s->rs_rows * s->out_w * 4); }

size_t bsfe_work_bytes(const bsfe_spec *s) {
    if (s->kind == BSFE_RAW) return 0;
    const size_t lanes = (size_t)(s->n_fft + 2) * BSFE_LANES + (BSFE_LANES > 1 ? BSFE_LANES : 0);
    size_t fft = a8((lanes > (size_t)s->n_frames ? lanes : (size_t)s->n_frames) * 4);
    if (s->kind == BSFE_LOGMEL) return fft;
    return image_bytes(s) + rows_bytes(s) + fft;
}

/* ---- natural logarithm in float arithmetic only ----
 * The same bits on every IEEE-754 machine (no libm: glibc and newlib differ in the last bit),
 * and about 20 instructions on a Cortex-M4F. x = 2^k (1 + f), 1 + f in [sqrt(2)/2, sqrt(2));
 * with s = f / (2 + f), log(1 + f) = f - f^2 / 2 + s (f^2 / 2 + R(s^2)), R the odd series of
 * atanh minus its first term, fitted (minimax) to degree 8 in s. ln 2 is split in a high part
 * exact in k * ln2_hi for |k| < 2^8 and a low part. Error below 1 ulp on [2^-126, 2^128). */
#define LOG_CORE(name, F)                                                                          \
    static F name(F m, F kf) { /* log(m 2^k), m in [sqrt(2)/2, sqrt(2)), kf = k */             \
        const float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;                      \
        const float c1 = 6.6666662693e-01f, c2 = 4.0000972152e-01f, c3 = 2.8498786688e-01f,      \
                    c4 = 2.4279078841e-01f;                                                      \
        const F f = m - 1.0f;                                                                    \
        const F s = f / (2.0f + f);                                                              \
        const F z = s * s, w = z * z;                                                            \
        const F r = z * (c1 + w * c3) + w * (c2 + w * c4);                                       \
        const F hfsq = 0.5f * f * f;                                                             \
        return kf * ln2_hi - ((hfsq - (s * (hfsq + r) + kf * ln2_lo)) - f);                      \
    }
LOG_CORE(log_core, float)
#if BSFE_LANES > 1
LOG_CORE(log_lanes_core, fe_v) /* the same steps in every lane */
#endif

float bsfe_logf(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    int32_t k = 0;
    if (u >= 0x7F800000u) { /* negative, inf or nan */
        if (x != x || u == 0x7F800000u) return x + x;
        if ((u & 0x7FFFFFFFu) == 0) return -INFINITY;
        return NAN;
    }
    if (u < 0x00800000u) { /* zero or subnormal */
        if (u == 0) return -INFINITY;
        x *= 33554432.0f; /* 2^25 */
        memcpy(&u, &x, 4);
        k = -25;
    }
    /* 1 + f in [sqrt(2)/2, sqrt(2)): shift the mantissa split point to 0x3f3504f3 */
    u += 0x3F800000u - 0x3F3504F3u;
    k += (int32_t)(u >> 23) - 127;
    u = (u & 0x007FFFFFu) + 0x3F3504F3u;
    float m;
    memcpy(&m, &u, 4);
    return log_core(m, (float)k);
}

/* ---- FFT ---- */

/* (ar + i ai) e^{-i theta} with c = cos theta, s = sin theta */
#define CMUL(ar, ai, c, s, yr, yi) \
    do {                          \
        yr = (ar) * (c) + (ai) * (s); \
        yi = (ai) * (c) - (ar) * (s); \
    } while (0)

/* In-place complex FFT of m points (m a power of two), interleaved re/im, e^{-2 pi i k n / m}, of
 * an input given in bit-reversed order; tw holds e^{-2 pi i k / 2m} (cos, sin) for k < m.
 * Decimation in time; the radix-2 stages go in pairs (radix 2^2): the butterflies of stages of spans h
 * and 2h over four quarter-blocks in one pass, which halves the loads, stores and twiddle reads. */
static void fft_complex(fe_v *z, int32_t m, const float *tw, int32_t h) {
    for (; 4 * h <= m; h *= 4) {
        /* twiddle strides (complex entries of tw) of spans 2h and 4h: e^{-2 pi i j / 2h}, e^{-2 pi i j / 4h} */
        const int32_t ka = m / h, kb = m / (2 * h);
        for (int32_t base = 0; base < m; base += 4 * h) {
            fe_v *q0 = z + 2 * base, *q1 = q0 + 2 * h, *q2 = q1 + 2 * h, *q3 = q2 + 2 * h;
            { /* j = 0: twiddles 1 */
                const fe_v y0r = q0[0] + q1[0], y0i = q0[1] + q1[1], y1r = q0[0] - q1[0], y1i = q0[1] - q1[1];
                const fe_v y2r = q2[0] + q3[0], y2i = q2[1] + q3[1], y3r = q2[0] - q3[0], y3i = q2[1] - q3[1];
                q0[0] = y0r + y2r;
                q0[1] = y0i + y2i;
                q2[0] = y0r - y2r;
                q2[1] = y0i - y2i;
                q1[0] = y1r + y3i; /* y1 + (-i) y3 */
                q1[1] = y1i - y3r;
                q3[0] = y1r - y3i;
                q3[1] = y1i + y3r;
            }
            for (int32_t j = 1; j < h; j++) {
                const float ca = tw[2 * j * ka], sa = tw[2 * j * ka + 1];
                const float cb = tw[2 * j * kb], sb = tw[2 * j * kb + 1];
                fe_v t1r, t1i, t3r, t3i, ur, ui, wr, wi;
                CMUL(q1[2 * j], q1[2 * j + 1], ca, sa, t1r, t1i);
                CMUL(q3[2 * j], q3[2 * j + 1], ca, sa, t3r, t3i);
                const fe_v x0r = q0[2 * j], x0i = q0[2 * j + 1], x2r = q2[2 * j], x2i = q2[2 * j + 1];
                const fe_v y0r = x0r + t1r, y0i = x0i + t1i, y1r = x0r - t1r, y1i = x0i - t1i;
                const fe_v y2r = x2r + t3r, y2i = x2i + t3i, y3r = x2r - t3r, y3i = x2i - t3i;
                CMUL(y2r, y2i, cb, sb, ur, ui);
                CMUL(y3r, y3i, cb, sb, wr, wi); /* then times -i: (wi, -wr) */
                q0[2 * j] = y0r + ur;
                q0[2 * j + 1] = y0i + ui;
                q2[2 * j] = y0r - ur;
                q2[2 * j + 1] = y0i - ui;
                q1[2 * j] = y1r + wi;
                q1[2 * j + 1] = y1i - wr;
                q3[2 * j] = y1r - wi;
                q3[2 * j + 1] = y1i + wr;
            }
        }
    }
    if (h < m) { /* one radix-2 stage of span h (2h = m) remains */
        const int32_t ka = m / h;
        fe_v *a = z, *b = z + 2 * h;
        for (int32_t j = 0; j < h; j++) {
            fe_v tr, ti;
            CMUL(b[2 * j], b[2 * j + 1], tw[2 * j * ka], tw[2 * j * ka + 1], tr, ti);
            const fe_v ar = a[2 * j], ai = a[2 * j + 1];
            a[2 * j] = ar + tr;
            a[2 * j + 1] = ai + ti;
            b[2 * j] = ar - tr;
            b[2 * j + 1] = ai - ti;
        }
    }
}

/* power of FFT bins from their real and imaginary parts, into *dst */
static void bin_power(int32_t mode, float power_half, fe_v re, fe_v im, fe_v *dst) {
    const fe_v p = re * re + im * im;
    if (mode == BSFE_POWER_SQUARE) {
        *dst = p;
        return;
    }
    float v[BSFE_LANES];
    memcpy(v, &p, sizeof v);
    for (int l = 0; l < BSFE_LANES; l++) {
        if (mode == BSFE_POWER_MAG) v[l] = sqrtf(v[l]);
#if BSFE_WITH_POWF
        else v[l] = powf(v[l], power_half);
#else
        else v[l] = NAN;
#endif
    }
    (void)power_half;
    memcpy(dst, v, sizeof v);
}

/* the windowed point (p[0] w[0], p[1] w[1]) of the frames in the lanes, the first frame's at p,
 * the next ones hop apart */
static void windowed_point(const float *p, const float *w, int32_t hop, fe_v *re, fe_v *im) {
#if BSFE_LANES == 1
    (void)hop;
    *re = p[0] * w[0];
    *im = p[1] * w[1];
#elif BSFE_LANES == 4
    /* the two floats of each frame times the window's two, then re and im apart */
    const __m128 w2 = _mm_loadl_pi(_mm_setzero_ps(), (const __m64 *)w), ww = _mm_movelh_ps(w2, w2);
    __m128 a = _mm_loadh_pi(_mm_loadl_pi(_mm_setzero_ps(), (const __m64 *)p), (const __m64 *)(p + hop));
    __m128 b = _mm_loadh_pi(_mm_loadl_pi(_mm_setzero_ps(), (const __m64 *)(p + 2 * hop)), (const __m64 *)(p + 3 * hop));
    a = _mm_mul_ps(a, ww);
    b = _mm_mul_ps(b, ww);
    *re = (fe_v)_mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    *im = (fe_v)_mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
#else
#error "BSFE_LANES must be 1 or 4"
#endif
}

/* Frames t .. t + BSFE_LANES - 1 of channel x (n_samples floats; frames from n_frames on are
 * zeros) -> power of bins 0 .. n_fft / 2 at z[2k + 1] (z holds n_fft / 2 + 1 points). A real FFT
 * of n points as a complex FFT of n / 2 points of (x[2j], x[2j + 1]) and a split into the two
 * halves' spectra. */
static void power_spectrum(const bsfe_spec *s, const float *x, int32_t t, fe_v *z) {
    const int32_t n = s->n_fft, m = n / 2, mode = s->power_mode, L = BSFE_LANES;
    const float ph = s->power_half;
    /* frame position i holds x[origin + i] * window[i - win_start] where both exist, else 0; the
     * complex points (positions 2c, 2c + 1) go to their bit-reversed places (the FFT's input order) */
    const int32_t origin = t * s->hop - (s->center ? n / 2 : 0), last = origin + (L - 1) * s->hop;
    const float *w = s->window - s->win_start;
    const uint16_t *rev = s->bitrev;
    if (s->win_start == 0 && s->win_len == n && origin >= 0 && last <= s->n_samples - n &&
        t + L <= s->n_frames && m >= 4) {
        /* whole frames: the first pass of the FFT (spans 1 and 2, twiddles 1) straight from the
         * samples. Places 4g .. 4g + 3 of the bit-reversed order hold the points r, r + m/2, r + m/4,
         * r + 3m/4 with r = rev(4g); the same operations as fft_complex's j = 0 case. */
        const float *xo = x + origin;
        const int32_t hop = s->hop;
        for (int32_t g = 0; g < m / 4; g++) {
            const int32_t r = rev[4 * g], p1 = r + m / 2, p2 = r + m / 4, p3 = r + 3 * (m / 4);
            fe_v x0r, x0i, x1r, x1i, x2r, x2i, x3r, x3i;
            windowed_point(xo + 2 * r, w + 2 * r, hop, &x0r, &x0i);
            windowed_point(xo + 2 * p1, w + 2 * p1, hop, &x1r, &x1i);
            windowed_point(xo + 2 * p2, w + 2 * p2, hop, &x2r, &x2i);
            windowed_point(xo + 2 * p3, w + 2 * p3, hop, &x3r, &x3i);
            const fe_v y0r = x0r + x1r, y0i = x0i + x1i, y1r = x0r - x1r, y1i = x0i - x1i;
            const fe_v y2r = x2r + x3r, y2i = x2i + x3i, y3r = x2r - x3r, y3i = x2i - x3i;
            fe_v *q = z + 8 * g;
            q[0] = y0r + y2r;
            q[1] = y0i + y2i;
            q[4] = y0r - y2r;
            q[5] = y0i - y2i;
            q[2] = y1r + y3i;
            q[3] = y1i - y3r;
            q[6] = y1r - y3i;
            q[7] = y1i + y3r;
        }
        fft_complex(z, m, s->twiddle, 4);
    } else {
        /* frames with padding (or past the last frame), one lane at a time */
        float *zf = (float *)z; /* lane l of point c's real part at zf[2cL + l] */
        for (int32_t l = 0; l < L; l++) {
            const int32_t o = origin + l * s->hop;
            int32_t lo = s->win_start, hi = s->win_start + s->win_len;
            if (lo < -o) lo = -o;
            if (hi > s->n_samples - o) hi = s->n_samples - o;
            if (t + l >= s->n_frames) lo = hi = 0;
            const float *xo = x + o;
            for (int32_t c = 0; c < m; c++) {
                float *d = zf + 2 * rev[c] * L + l;
                d[0] = 2 * c >= lo && 2 * c < hi ? xo[2 * c] * w[2 * c] : 0.0f;
                d[L] = 2 * c + 1 >= lo && 2 * c + 1 < hi ? xo[2 * c + 1] * w[2 * c + 1] : 0.0f;
            }
        }
        fft_complex(z, m, s->twiddle, 1);
    }
    const float *tw = s->twiddle;
    const fe_v zero = {0};
    /* k = 0 and k = m from Z[0] */
    const fe_v z0r = z[0], z0i = z[1];
    bin_power(mode, ph, z0r + z0i, zero, &z[1]);
    bin_power(mode, ph, z0r - z0i, zero, &z[2 * m + 1]);
    /* E = (Z[k] + conj Z[q]) / 2, O = (Z[k] - conj Z[q]) / 2i, X[k] = E + W^k O, X[q] = conj(E - W^k O),
     * q = m - k; computed as 2E, 2O and 2X (exact doublings), |X|^2 = |2X|^2 / 4 (exact) */
    for (int32_t k = 1; k <= m / 2; k++) {
        const int32_t q = m - k;
        const fe_v ar = z[2 * k], ai = z[2 * k + 1], br = z[2 * q], bi = z[2 * q + 1];
        const fe_v er = ar + br, ei = ai - bi, or_ = ai + bi, oi = br - ar;
        fe_v wr, wi;
        CMUL(or_, oi, tw[2 * k], tw[2 * k + 1], wr, wi);
        const fe_v xr = er + wr, xi = ei + wi, yr = er - wr, yi = wi - ei;
        if (mode == BSFE_POWER_SQUARE) {
            const fe_v pq = (yr * yr + yi * yi) * 0.25f;
            z[2 * k + 1] = (xr * xr + xi * xi) * 0.25f;
            if (q != k) z[2 * q + 1] = pq;
        } else {
            fe_v pq;
            bin_power(mode, ph, 0.5f * yr, 0.5f * yi, &pq);
            bin_power(mode, ph, 0.5f * xr, 0.5f * xi, &z[2 * k + 1]);
            if (q != k) z[2 * q + 1] = pq;
        }
    }
}

void bsfe_power_spectrum(const bsfe_spec *s, const float *x, int32_t t, float *buf) {
    power_spectrum(s, x, t, lanes_buffer(buf));
}

/* bsfe_logf of each lane */
static fe_v log_lanes(fe_v x) {
#if BSFE_LANES == 1
    return bsfe_logf(x);
#else
    fe_vu u = (fe_vu)x;
    const fe_vi normal = (u - 0x00800000u) < 0x7F000000u; /* positive, normal and finite */
    int32_t all = -1;
    for (int l = 0; l < BSFE_LANES; l++) all &= normal[l];
    if (!all) {
        for (int l = 0; l < BSFE_LANES; l++) x[l] = bsfe_logf(x[l]);
        return x;
    }
    u += 0x3F800000u - 0x3F3504F3u;
    const fe_vi k = (fe_vi)(u >> 23) - 127;
    u = (u & 0x007FFFFFu) + 0x3F3504F3u;
    return log_lanes_core((fe_v)u, __builtin_convertvector(k, fe_v));
#endif
}

/* log-mel of one channel into img [n_mels][n_frames] (row stride n_frames) */
static void logmel(const bsfe_spec *s, const float *x, float *img, void *work) {
    fe_v *z = lanes_buffer(work);
    for (int32_t t = 0; t < s->n_frames; t += BSFE_LANES) {
        power_spectrum(s, x, t, z);
        const float *w = s->mel_weights;
        const int32_t nt = BSFE_LANES == 1 || s->n_frames - t >= BSFE_LANES ? BSFE_LANES : s->n_frames - t;
        for (int32_t b = 0; b < s->n_mels; b++) {
            const int32_t k0 = s->mel_first[b], nk = s->mel_count[b];
            fe_v acc = {0};
            const fe_v *pw = z + 2 * k0 + 1; /* bin k at z[2k + 1], stride 2 */
            int32_t j = 0;
            for (; j + 4 <= nk; j += 4) { /* unrolled, still one sum in order */
                acc += w[j] * pw[2 * j];
                acc += w[j + 1] * pw[2 * j + 2];
                acc += w[j + 2] * pw[2 * j + 4];
                acc += w[j + 3] * pw[2 * j + 6];
            }
            for (; j < nk; j++) acc += w[j] * pw[2 * j];
            w += nk;
            const fe_v v = log_lanes(acc + s->log_offset);
            memcpy(img + (size_t)b * s->n_frames + t, &v, (size_t)nt * sizeof(float));
        }
    }
}

/* ---- binary image ---- */

/* the (n - 1) / 2-th smallest of v (torch.median's lower median); reorders v. Wirth's selection:
 * partition around the current candidate until the k-th place holds its final value. */
float bsfe_lower_median(float *v, size_t n) {
    int32_t lo = 0, hi = (int32_t)n - 1;
    const int32_t k = ((int32_t)n - 1) / 2;
    while (lo < hi) {
        const float p = v[k];
        int32_t i = lo, j = hi;
        do {
            while (v[i] < p) i++;
            while (p < v[j]) j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < k) lo = i;
        if (k < i) hi = j;
    }
    return v[k];
}

/* the histogram bin of a floored position f, as torch's .long().clamp(0, bins - 1) on x86: a value
 * outside int64 (NaN, +-inf, >= 2^63) converts to INT64_MIN there, hence bin 0. Compared before
 * the conversion, which is undefined behaviour in C for such values. */
static int32_t otsu_bin(float f) {
    if (!(f >= 0.0f && f < 9.2233720368547758e18f)) return 0;
    return f > (float)(BSFE_OTSU_BINS - 1) ? BSFE_OTSU_BINS - 1 : (int32_t)f;
}

/* Otsu's threshold of n values in float32 as bitsound.audio.features.otsu_threshold computes it:
 * 256 bins between min and max (NaN if any value is NaN, as torch's amin / amax), cumulative sums
 * in double rounded to float (torch's CPU cumsum), the first bin centre that maximises the
 * between-class variance (NaN throughout: bin 0's centre, NaN, as torch's argmax) */
float bsfe_otsu(const float *v, size_t n) {
    float hist[BSFE_OTSU_BINS];
    float lo = v[0], hi = v[0];
    for (size_t i = 1; i < n && lo == lo; i++) {
        if (v[i] != v[i]) lo = hi = v[i];
        if (v[i] < lo) lo = v[i];
        if (v[i] > hi) hi = v[i];
    }
    const float span = hi - lo, bw = span > 0.0f ? span / (float)BSFE_OTSU_BINS : 1.0f;
    const float cw = span / (float)BSFE_OTSU_BINS;
    memset(hist, 0, sizeof hist);
    for (size_t i = 0; i < n; i++) hist[otsu_bin(floorf((v[i] - lo) / bw))] += 1.0f;
    float total = 0.0f, moment_total;
    double cm = 0.0;
    for (int b = 0; b < BSFE_OTSU_BINS; b++) {
        total += hist[b];
        cm += (double)(hist[b] * (lo + ((float)b + 0.5f) * cw));
    }
    moment_total = (float)cm;
    double cw_low = 0.0, cmom = 0.0;
    float best = -INFINITY;
    int best_b = 0;
    for (int b = 0; b < BSFE_OTSU_BINS - 1; b++) {
        const float centre = lo + ((float)b + 0.5f) * cw;
        cw_low += (double)hist[b];
        cmom += (double)(hist[b] * centre);
        const float wl = (float)cw_low, mom = (float)cmom;
        const float wh = total - wl;
        const float ml = mom / (wl > 1.0f ? wl : 1.0f), mh = (moment_total - mom) / (wh > 1.0f ? wh : 1.0f);
        const float d = ml - mh;
        const float between = wl * wh * (d * d);
        if (between > best || (between != between && best == best)) { /* torch's argmax: NaN is the max */
            best = between;
            best_b = b;
        }
    }
    return lo + ((float)best_b + 0.5f) * cw;
}

/* the width pass of the resize for input row y: out_w values into dst */
static void resize_row(const bsfe_spec *s, const float *img, int32_t y, float *dst) {
    const float *src = img + (size_t)y * s->n_frames, *w = s->rs_x_weights;
    for (int32_t ox = 0; ox < s->out_w; ox++) {
        const int32_t x0 = s->rs_x_first[ox], nx = s->rs_x_count[ox];
        float acc = src[x0] * w[0];
        for (int32_t j = 1; j < nx; j++) acc = fmaf(src[x0 + j], w[j], acc);
        w += nx;
        dst[ox] = acc;
    }
}

/* threshold img in place to {0, 1}, then resize to out [out_h][out_w] (>= 0.5) */
static void binarize_resize(const bsfe_spec *s, float *img, float *rows, float *tmp, float *out) {
    const size_t npx = (size_t)s->n_mels * s->n_frames;
    if (s->denoise)
        for (int32_t b = 0; b < s->n_mels; b++) {
            float *row = img + (size_t)b * s->n_frames;
            memcpy(tmp, row, (size_t)s->n_frames * sizeof(float));
            const float med = bsfe_lower_median(tmp, (size_t)s->n_frames);
            for (int32_t t = 0; t < s->n_frames; t++) row[t] = row[t] - med;
        }
    float thr = s->threshold_value;
#if BSFE_WITH_MEAN
    if (s->threshold == BSFE_THR_MEAN) {
        double sum = 0.0;
        for (size_t i = 0; i < npx; i++) sum += img[i];
        thr = (float)(sum / (double)npx);
    }
#endif
#if BSFE_WITH_OTSU
    if (s->threshold == BSFE_THR_OTSU) thr = bsfe_otsu(img, npx);
#endif
    for (size_t i = 0; i < npx; i++) img[i] = img[i] > thr ? 1.0f : 0.0f;
    /* height pass over width-passed rows, computed when an output row first needs them (the rows
     * of one output row are consecutive; out may overwrite image rows no later output row reads).
     * Input row y stays in slot y % rs_rows of rows while the next output rows read it: rows
     * [have_lo, have_hi) are there. */
    const float *wy = s->rs_y_weights;
    const int32_t nr = s->rs_rows;
    int32_t have_lo = 0, have_hi = 0;
    for (int32_t oy = 0; oy < s->out_h; oy++) {
        const int32_t y0 = s->rs_y_first[oy], ny = s->rs_y_count[oy];
        if (y0 < have_lo || y0 > have_hi) have_lo = have_hi = y0;
        for (; have_hi < y0 + ny; have_hi++) resize_row(s, img, have_hi, rows + (size_t)(have_hi % nr) * s->out_w);
        if (have_lo < have_hi - nr) have_lo = have_hi - nr;
        /* dst accumulates each output's sum over the rows in order */
        float *dst = out + (size_t)oy * s->out_w;
        const float *r = rows + (size_t)(y0 % nr) * s->out_w;
        for (int32_t ox = 0; ox < s->out_w; ox++) dst[ox] = r[ox] * wy[0];
        for (int32_t j = 1; j < ny; j++) {
            r = rows + (size_t)((y0 + j) % nr) * s->out_w;
            for (int32_t ox = 0; ox < s->out_w; ox++) dst[ox] = fmaf(r[ox], wy[j], dst[ox]);
        }
        for (int32_t ox = 0; ox < s->out_w; ox++) dst[ox] = dst[ox] >= 0.5f ? 1.0f : 0.0f;
        wy += ny;
    }
}

void bsfe_run(const bsfe_spec *s, const float *audio, float *out, void *work) {
    if (s->kind == BSFE_RAW) {
        if (out != audio) memcpy(out, audio, (size_t)s->n_channels * s->n_samples * sizeof(float));
        return;
    }
    if (s->kind == BSFE_LOGMEL) {
        for (int32_t ch = 0; ch < s->n_channels; ch++)
            logmel(s, audio + (size_t)ch * s->n_samples, out + (size_t)ch * s->n_mels * s->n_frames, work);
        return;
    }
    float *img = (float *)work;
    float *rows = (float *)((char *)work + image_bytes(s));
    float *buf = (float *)((char *)rows + rows_bytes(s));
    for (int32_t ch = 0; ch < s->n_channels; ch++) {
        logmel(s, audio + (size_t)ch * s->n_samples, img, buf);
        binarize_resize(s, img, rows, buf, out + (size_t)ch * s->out_h * s->out_w);
    }
}
