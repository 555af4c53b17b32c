/* frontend.c: the audio front ends in portable C99 (see frontend.h for the semantics). */
#include <math.h>
#include <string.h>

#include "frontend.h"

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
    size_t fft = a8((size_t)(s->n_fft + 2 > s->n_frames ? s->n_fft + 2 : s->n_frames) * 4);
    if (s->kind == BSFE_LOGMEL) return fft;
    return image_bytes(s) + rows_bytes(s) + fft;
}

/* ---- natural logarithm in float arithmetic only ----
 * The same bits on every IEEE-754 machine (no libm: glibc and newlib differ in the last bit),
 * and about 20 instructions on a Cortex-M4F. x = 2^k (1 + f), 1 + f in [sqrt(2)/2, sqrt(2));
 * with s = f / (2 + f), log(1 + f) = f - f^2 / 2 + s (f^2 / 2 + R(s^2)), R the odd series of
 * atanh minus its first term, fitted (minimax) to degree 8 in s. ln 2 is split in a high part
 * exact in k * ln2_hi for |k| < 2^8 and a low part. Error below 1 ulp on [2^-126, 2^128). */
float bsfe_logf(float x) {
    const float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;
    const float c1 = 6.6666662693e-01f, c2 = 4.0000972152e-01f, c3 = 2.8498786688e-01f,
                c4 = 2.4279078841e-01f;
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
    float f = m - 1.0f;
    float s = f / (2.0f + f);
    float z = s * s, w = z * z;
    float r = z * (c1 + w * c3) + w * (c2 + w * c4);
    float hfsq = 0.5f * f * f;
    float kf = (float)k;
    return kf * ln2_hi - ((hfsq - (s * (hfsq + r) + kf * ln2_lo)) - f);
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
static void fft_complex(float *z, int32_t m, const float *tw, int32_t h) {
    for (; 4 * h <= m; h *= 4) {
        /* twiddle strides (complex entries of tw) of spans 2h and 4h: e^{-2 pi i j / 2h}, e^{-2 pi i j / 4h} */
        const int32_t ka = m / h, kb = m / (2 * h);
        for (int32_t base = 0; base < m; base += 4 * h) {
            float *q0 = z + 2 * base, *q1 = q0 + 2 * h, *q2 = q1 + 2 * h, *q3 = q2 + 2 * h;
            { /* j = 0: twiddles 1 */
                const float y0r = q0[0] + q1[0], y0i = q0[1] + q1[1], y1r = q0[0] - q1[0], y1i = q0[1] - q1[1];
                const float y2r = q2[0] + q3[0], y2i = q2[1] + q3[1], y3r = q2[0] - q3[0], y3i = q2[1] - q3[1];
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
                float t1r, t1i, t3r, t3i, ur, ui, wr, wi;
                CMUL(q1[2 * j], q1[2 * j + 1], ca, sa, t1r, t1i);
                CMUL(q3[2 * j], q3[2 * j + 1], ca, sa, t3r, t3i);
                const float x0r = q0[2 * j], x0i = q0[2 * j + 1], x2r = q2[2 * j], x2i = q2[2 * j + 1];
                const float y0r = x0r + t1r, y0i = x0i + t1i, y1r = x0r - t1r, y1i = x0i - t1i;
                const float y2r = x2r + t3r, y2i = x2i + t3i, y3r = x2r - t3r, y3i = x2i - t3i;
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
        float *a = z, *b = z + 2 * h;
        for (int32_t j = 0; j < h; j++) {
            float tr, ti;
            CMUL(b[2 * j], b[2 * j + 1], tw[2 * j * ka], tw[2 * j * ka + 1], tr, ti);
            const float ar = a[2 * j], ai = a[2 * j + 1];
            a[2 * j] = ar + tr;
            a[2 * j + 1] = ai + ti;
            b[2 * j] = ar - tr;
            b[2 * j + 1] = ai - ti;
        }
    }
}

/* power of an FFT bin from its real and imaginary parts */
static float bin_power(int32_t mode, float power_half, float re, float im) {
    const float p = re * re + im * im;
    if (mode == BSFE_POWER_SQUARE) return p;
    if (mode == BSFE_POWER_MAG) return sqrtf(p);
#if BSFE_WITH_POWF
    return powf(p, power_half);
#else
    (void)power_half;
    return NAN;
#endif
}

/* Frame t of channel x (n_samples floats) -> power of bins 0 .. n_fft / 2 at buf[2k + 1] (buf holds
 * n_fft + 2 floats). A real FFT of n points as a complex FFT of n / 2 points of (x[2j], x[2j + 1])
 * and a split into the two halves' spectra. */
void bsfe_power_spectrum(const bsfe_spec *s, const float *x, int32_t t, float *buf) {
    const int32_t n = s->n_fft, m = n / 2, mode = s->power_mode;
    const float ph = s->power_half;
    /* frame position i holds x[origin + i] * window[i - win_start] where both exist, else 0; the
     * complex points (positions 2c, 2c + 1) go to their bit-reversed places (the FFT's input order) */
    const int32_t origin = t * s->hop - (s->center ? n / 2 : 0);
    int32_t lo = s->win_start, hi = s->win_start + s->win_len;
    if (lo < -origin) lo = -origin;
    if (hi > s->n_samples - origin) hi = s->n_samples - origin;
    const float *xo = x + origin, *w = s->window - s->win_start;
    const uint16_t *rev = s->bitrev;
    if (lo == 0 && hi == n && m >= 4) {
        /* a whole frame: the first pass of the FFT (spans 1 and 2, twiddles 1) straight from the
         * samples. Places 4g .. 4g + 3 of the bit-reversed order hold the points r, r + m/2, r + m/4,
         * r + 3m/4 with r = rev(4g); the same operations as fft_complex's j = 0 case. */
        for (int32_t g = 0; g < m / 4; g++) {
            const int32_t r = rev[4 * g], p1 = r + m / 2, p2 = r + m / 4, p3 = r + 3 * (m / 4);
            const float x0r = xo[2 * r] * w[2 * r], x0i = xo[2 * r + 1] * w[2 * r + 1];
            const float x1r = xo[2 * p1] * w[2 * p1], x1i = xo[2 * p1 + 1] * w[2 * p1 + 1];
            const float x2r = xo[2 * p2] * w[2 * p2], x2i = xo[2 * p2 + 1] * w[2 * p2 + 1];
            const float x3r = xo[2 * p3] * w[2 * p3], x3i = xo[2 * p3 + 1] * w[2 * p3 + 1];
            const float y0r = x0r + x1r, y0i = x0i + x1i, y1r = x0r - x1r, y1i = x0i - x1i;
            const float y2r = x2r + x3r, y2i = x2i + x3i, y3r = x2r - x3r, y3i = x2i - x3i;
            float *q = buf + 8 * g;
            q[0] = y0r + y2r;
            q[1] = y0i + y2i;
            q[4] = y0r - y2r;
            q[5] = y0i - y2i;
            q[2] = y1r + y3i;
            q[3] = y1i - y3r;
            q[6] = y1r - y3i;
            q[7] = y1i + y3r;
        }
        fft_complex(buf, m, s->twiddle, 4);
    } else {
        for (int32_t c = 0; c < m; c++) {
            float *d = buf + 2 * rev[c];
            d[0] = 2 * c >= lo && 2 * c < hi ? xo[2 * c] * w[2 * c] : 0.0f;
            d[1] = 2 * c + 1 >= lo && 2 * c + 1 < hi ? xo[2 * c + 1] * w[2 * c + 1] : 0.0f;
        }
        fft_complex(buf, m, s->twiddle, 1);
    }
    const float *tw = s->twiddle;
    /* k = 0 and k = m from Z[0] */
    const float z0r = buf[0], z0i = buf[1];
    buf[1] = bin_power(mode, ph, z0r + z0i, 0.0f);
    buf[2 * m + 1] = bin_power(mode, ph, z0r - z0i, 0.0f);
    /* E = (Z[k] + conj Z[q]) / 2, O = (Z[k] - conj Z[q]) / 2i, X[k] = E + W^k O, X[q] = conj(E - W^k O),
     * q = m - k; computed as 2E, 2O and 2X (exact doublings), |X|^2 = |2X|^2 / 4 (exact) */
    for (int32_t k = 1; k <= m / 2; k++) {
        const int32_t q = m - k;
        const float ar = buf[2 * k], ai = buf[2 * k + 1], br = buf[2 * q], bi = buf[2 * q + 1];
        const float er = ar + br, ei = ai - bi, or_ = ai + bi, oi = br - ar;
        float wr, wi;
        CMUL(or_, oi, tw[2 * k], tw[2 * k + 1], wr, wi);
        const float xr = er + wr, xi = ei + wi, yr = er - wr, yi = wi - ei;
        if (mode == BSFE_POWER_SQUARE) {
            const float pq = (yr * yr + yi * yi) * 0.25f;
            buf[2 * k + 1] = (xr * xr + xi * xi) * 0.25f;
            if (q != k) buf[2 * q + 1] = pq;
        } else {
            const float pq = bin_power(mode, ph, 0.5f * yr, 0.5f * yi);
            buf[2 * k + 1] = bin_power(mode, ph, 0.5f * xr, 0.5f * xi);
            if (q != k) buf[2 * q + 1] = pq;
        }
    }
}

/* log-mel of one channel into img [n_mels][n_frames] (row stride n_frames) */
static void logmel(const bsfe_spec *s, const float *x, float *img, float *buf) {
    for (int32_t t = 0; t < s->n_frames; t++) {
        bsfe_power_spectrum(s, x, t, buf);
        const float *w = s->mel_weights;
        for (int32_t b = 0; b < s->n_mels; b++) {
            const int32_t k0 = s->mel_first[b], nk = s->mel_count[b];
            float acc = 0.0f;
            const float *pw = buf + 2 * k0 + 1; /* bin k at buf[2k + 1], stride 2 */
            int32_t j = 0;
            for (; j + 4 <= nk; j += 4) { /* unrolled, still one sum in order */
                acc += w[j] * pw[2 * j];
                acc += w[j + 1] * pw[2 * j + 2];
                acc += w[j + 2] * pw[2 * j + 4];
                acc += w[j + 3] * pw[2 * j + 6];
            }
            for (; j < nk; j++) acc += w[j] * pw[2 * j];
            w += nk;
            img[(size_t)b * s->n_frames + t] = bsfe_logf(acc + s->log_offset);
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
    /* height pass over width-passed rows, computed when an output row needs them (the rows of one
     * output row are consecutive; out may overwrite image rows no later output row reads) */
    const float *wy = s->rs_y_weights;
    for (int32_t oy = 0; oy < s->out_h; oy++) {
        const int32_t y0 = s->rs_y_first[oy], ny = s->rs_y_count[oy];
        for (int32_t j = 0; j < ny; j++) resize_row(s, img, y0 + j, rows + (size_t)j * s->out_w);
        float *dst = out + (size_t)oy * s->out_w;
        for (int32_t ox = 0; ox < s->out_w; ox++) {
            float acc = rows[ox] * wy[0];
            for (int32_t j = 1; j < ny; j++) acc = fmaf(rows[(size_t)j * s->out_w + ox], wy[j], acc);
            dst[ox] = acc >= 0.5f ? 1.0f : 0.0f;
        }
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
            logmel(s, audio + (size_t)ch * s->n_samples, out + (size_t)ch * s->n_mels * s->n_frames, (float *)work);
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
