/* frontend.h: bitsound's audio front ends in portable C99 (no allocation, no I/O), shared by the
 * host engine (bitsound predict --engine) and the generated microcontroller code (bitsound deploy).
 *
 * The semantics are those of bitsound/audio/features.py, in float32:
 *   BSFE_LOGMEL        log(mel_power + log_offset): periodic Hann window zero-padded to n_fft, STFT
 *                      with the signal zero-padded by n_fft / 2 at both ends when center, |X|^power,
 *                      a sparse mel filterbank (its nonzero span per band);
 *   BSFE_BINARY_IMAGE  that log-mel image per channel, minus each band's lower median over time
 *                      (denoise), thresholded (fixed value, image mean or Otsu's threshold on a
 *                      256-bin histogram), resized to out_h x out_w by antialiased bilinear
 *                      interpolation (width pass, then height pass with fused multiply-adds, as
 *                      torch's CPU kernel) and >= 0.5;
 *   BSFE_RAW           the waveform itself.
 * Every table (window, twiddles, mel filters, resize weights) is computed in Python from the recipe
 * (bitsound/engine/frontend.py), so the C code holds no trigonometry and the host and the
 * microcontroller read identical numbers (the logarithm too: bsfe_logf, not libm's, whose last
 * bit differs between C libraries). Compile without floating-point contraction
 * (-ffp-contract=off): the fused multiply-adds the resize needs are explicit (fmaf).
 *
 * Layouts: audio [n_channels][n_samples]; output [n_channels][n_mels][n_frames] (log-mel),
 * [n_channels][out_h][out_w] (binary image) or [n_channels][n_samples] (raw).
 */
#ifndef BSFE_H
#define BSFE_H

#include <stddef.h>
#include <stdint.h>

enum { BSFE_RAW = 0, BSFE_LOGMEL = 1, BSFE_BINARY_IMAGE = 2 };
enum { BSFE_THR_FIXED = 0, BSFE_THR_MEAN = 1, BSFE_THR_OTSU = 2 };
enum { BSFE_POWER_ANY = 0, BSFE_POWER_MAG = 1, BSFE_POWER_SQUARE = 2 };

#define BSFE_OTSU_BINS 256

/* Frames the STFT computes at once (frontend.c): 4 in vector lanes on x86-64 with GCC or Clang
 * (SSE2, the same bits as one at a time), else 1. A generated project (BSM_CONFIG) keeps 1: its
 * memory plan counts the one-frame buffer. */
#ifndef BSFE_LANES
#if defined(__GNUC__) && defined(__SSE2__) && defined(__x86_64__) && !defined(BSM_CONFIG)
#define BSFE_LANES 4
#else
#define BSFE_LANES 1
#endif
#endif

typedef struct {
    int32_t kind;
    int32_t n_channels, n_samples;   /* audio [n_channels][n_samples] */
    /* STFT (log-mel and binary image) */
    int32_t n_fft, hop, center, n_frames;
    int32_t win_start, win_len;      /* the window's nonzero span inside the n_fft frame */
    int32_t power_mode;              /* BSFE_POWER_*: |X|^2, |X| or (|X|^2)^power_half */
    float power_half, log_offset;
    int32_t n_mels;
    const float *window;             /* [win_len] */
    const float *twiddle;            /* [n_fft / 2][2]: cos, sin of 2 pi k / n_fft */
    const uint16_t *bitrev;          /* [n_fft / 2]: the bit reversal of log2(n_fft / 2) bits */
    const uint16_t *mel_first;       /* [n_mels] first FFT bin of each band */
    const uint16_t *mel_count;       /* [n_mels] bins in each band (the rest weigh 0) */
    const float *mel_weights;        /* the bands' weights, concatenated */
    /* binary image */
    int32_t denoise;                 /* 1: subtract each band's median over time */
    int32_t threshold;               /* BSFE_THR_* */
    float threshold_value;
    int32_t out_h, out_w;
    int32_t rs_rows;                 /* most input rows one output row reads (max of rs_y_count) */
    const uint16_t *rs_y_first, *rs_y_count; /* [out_h] */
    const float *rs_y_weights;       /* concatenated */
    const uint16_t *rs_x_first, *rs_x_count; /* [out_w] */
    const float *rs_x_weights;
    int32_t out_in_work;             /* 1: out may be the start of work (checked in Python) */
} bsfe_spec;

/* floats of one example's output */
size_t bsfe_out_floats(const bsfe_spec *s);
/* bytes of working memory bsfe_run needs (8-byte aligned) */
size_t bsfe_work_bytes(const bsfe_spec *s);
/* one example: audio -> out; work has bsfe_work_bytes(s) bytes, 8-byte aligned. With
 * s->out_in_work, out may equal work; otherwise they must not overlap. */
void bsfe_run(const bsfe_spec *s, const float *audio, float *out, void *work);

/* pieces, exposed for tests and profiling */
float bsfe_logf(float x);
/* power of bins 0 .. n_fft / 2 of frames t .. t + BSFE_LANES - 1 (zeros from n_frames on): bin k
 * of frame t + l at buf[(2k + 1) BSFE_LANES + l]; buf holds (n_fft + 2) BSFE_LANES floats,
 * aligned to 4 BSFE_LANES bytes */
void bsfe_power_spectrum(const bsfe_spec *s, const float *x, int32_t t, float *buf);
float bsfe_otsu(const float *v, size_t n);
float bsfe_lower_median(float *v, size_t n);

#endif
