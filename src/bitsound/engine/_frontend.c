/* _frontend.c: the CPython entry point of the C front end (frontend.c), part of the _engine module.
 *
 *   frontend_run(ints, floats, tables, audio, out)
 *     ints    tuple of int    bsfe_spec's integer fields in bitsound.engine.frontend.INT_FIELDS order
 *     floats  tuple of float  FLOAT_FIELDS
 *     tables  tuple of buffers (float32 'f' or uint16 'H', C-contiguous) in TABLE_FIELDS order
 *     audio   float32 buffer [batch][n_channels][n_samples]
 *     out     float32 buffer [batch][bsfe_out_floats]
 *
 * Every table length and index range is checked against the integer fields before the C code
 * reads it, so a malformed spec raises ValueError instead of reading out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "frontend.h"

#define N_INTS 17
#define N_FLOATS 3
#define N_TABLES 12

enum { T_WINDOW, T_TWIDDLE, T_BITREV, T_MEL_FIRST, T_MEL_COUNT, T_MEL_W, T_RY_FIRST, T_RY_COUNT, T_RY_W, T_RX_FIRST,
       T_RX_COUNT, T_RX_W };
static const char T_FORMAT[N_TABLES] = {'f', 'f', 'H', 'H', 'H', 'f', 'H', 'H', 'f', 'H', 'H', 'f'};
static const char *const T_NAMES[N_TABLES] = {"window", "twiddle", "bitrev", "mel_first", "mel_count", "mel_weights",
                                              "rs_y_first", "rs_y_count", "rs_y_weights", "rs_x_first",
                                              "rs_x_count", "rs_x_weights"};

static int bad(const char *msg, const char *what) {
    PyErr_Format(PyExc_ValueError, "front-end spec: %s (%s)", msg, what);
    return 0;
}

/* first + count <= limit for every span, and the counts sum to the weights' length */
static int spans_ok(const uint16_t *first, const uint16_t *count, Py_ssize_t n, Py_ssize_t n_weights, long limit,
                    const char *what) {
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((long)first[i] + (long)count[i] > limit) return bad("a span runs past its input", what);
        total += count[i];
    }
    if (total != n_weights) return bad("the span lengths do not add up to the weights", what);
    return 1;
}

static int check_spec(const bsfe_spec *s, const Py_ssize_t *len) {
    if (s->kind < BSFE_RAW || s->kind > BSFE_BINARY_IMAGE) return bad("unknown kind", "kind");
    if (s->n_channels < 1 || s->n_samples < 1 || s->n_channels > 64) return bad("bad audio shape", "n_samples");
    if (s->kind == BSFE_RAW) return 1;
    const int32_t n = s->n_fft;
    if (n < 4 || (n & (n - 1)) || n > 65536) return bad("n_fft must be a power of two in [4, 65536]", "n_fft");
    if (s->hop < 1 || s->n_frames < 1 || s->n_mels < 1 || s->n_mels > 65535 || s->n_frames > 1000000)
        return bad("bad hop, frame or band count", "n_frames");
    if (s->win_start < 0 || s->win_len < 1 || s->win_start + s->win_len > n) return bad("window span", "win_len");
    if (s->power_mode < BSFE_POWER_ANY || s->power_mode > BSFE_POWER_SQUARE) return bad("power mode", "power_mode");
    if (len[T_WINDOW] != s->win_len) return bad("length differs from win_len", "window");
    if (len[T_TWIDDLE] != n) return bad("needs n_fft values", "twiddle");
    if (len[T_BITREV] != n / 2) return bad("needs n_fft / 2 values", "bitrev");
    for (int32_t i = 0; i < n / 2; i++)
        if (s->bitrev[i] >= n / 2) return bad("an index beyond n_fft / 2", "bitrev");
    if (len[T_MEL_FIRST] != s->n_mels || len[T_MEL_COUNT] != s->n_mels) return bad("needs n_mels values", "mel");
    if (!spans_ok(s->mel_first, s->mel_count, s->n_mels, len[T_MEL_W], n / 2 + 1, "mel")) return 0;
    if (s->kind == BSFE_LOGMEL) return 1;
    if (s->threshold < BSFE_THR_FIXED || s->threshold > BSFE_THR_OTSU) return bad("threshold kind", "threshold");
    if (s->out_h < 1 || s->out_w < 1 || s->out_h > 65535 || s->out_w > 65535) return bad("output size", "out_h");
    if (len[T_RY_FIRST] != s->out_h || len[T_RY_COUNT] != s->out_h) return bad("needs out_h values", "rs_y");
    if (len[T_RX_FIRST] != s->out_w || len[T_RX_COUNT] != s->out_w) return bad("needs out_w values", "rs_x");
    if (!spans_ok(s->rs_y_first, s->rs_y_count, s->out_h, len[T_RY_W], s->n_mels, "rs_y")) return 0;
    if (!spans_ok(s->rs_x_first, s->rs_x_count, s->out_w, len[T_RX_W], s->n_frames, "rs_x")) return 0;
    for (int32_t i = 0; i < s->out_h; i++)
        if (s->rs_y_count[i] < 1 || s->rs_y_count[i] > s->rs_rows) return bad("a row count exceeds rs_rows", "rs_y");
    for (int32_t i = 0; i < s->out_w; i++)
        if (s->rs_x_count[i] < 1) return bad("an empty span", "rs_x");
    return 1;
}

PyObject *bs_py_frontend_run(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *ints, *floats, *tables, *ao, *oo;
    if (!PyArg_ParseTuple(args, "O!O!O!OO", &PyTuple_Type, &ints, &PyTuple_Type, &floats, &PyTuple_Type, &tables,
                          &ao, &oo))
        return NULL;
    if (PyTuple_GET_SIZE(ints) != N_INTS || PyTuple_GET_SIZE(floats) != N_FLOATS ||
        PyTuple_GET_SIZE(tables) != N_TABLES) {
        PyErr_Format(PyExc_ValueError, "frontend_run takes %d ints, %d floats and %d tables", N_INTS, N_FLOATS,
                     N_TABLES);
        return NULL;
    }
    long iv[N_INTS];
    for (int i = 0; i < N_INTS; i++) {
        iv[i] = PyLong_AsLong(PyTuple_GET_ITEM(ints, i));
        if (iv[i] == -1 && PyErr_Occurred()) return NULL;
        if (iv[i] < -1000000000L || iv[i] > 1000000000L) {
            PyErr_SetString(PyExc_ValueError, "front-end spec: an integer field is out of range");
            return NULL;
        }
    }
    double fv[N_FLOATS];
    for (int i = 0; i < N_FLOATS; i++) {
        fv[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(floats, i));
        if (fv[i] == -1.0 && PyErr_Occurred()) return NULL;
    }
    Py_buffer tb[N_TABLES], ab, ob;
    int got = 0, ok = 0, have_a = 0, have_o = 0;
    Py_ssize_t len[N_TABLES];
    for (; got < N_TABLES; got++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(tables, got), &tb[got], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        const char *f = tb[got].format ? tb[got].format : "?";
        if (f[0] != T_FORMAT[got] || f[1] != 0) {
            PyErr_Format(PyExc_TypeError, "table %s must have format '%c', got '%s'", T_NAMES[got], T_FORMAT[got], f);
            got++;
            goto done;
        }
        len[got] = tb[got].len / tb[got].itemsize;
    }
    if (PyObject_GetBuffer(ao, &ab, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
    have_a = 1;
    if (PyObject_GetBuffer(oo, &ob, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto done;
    have_o = 1;
    if (ab.itemsize != 4 || strcmp(ab.format ? ab.format : "", "f") || ob.itemsize != 4 ||
        strcmp(ob.format ? ob.format : "", "f")) {
        PyErr_SetString(PyExc_TypeError, "audio and out must be C-contiguous float32 buffers");
        goto done;
    }
    bsfe_spec s;
    memset(&s, 0, sizeof s);
    s.kind = (int32_t)iv[0]; s.n_channels = (int32_t)iv[1]; s.n_samples = (int32_t)iv[2]; s.n_fft = (int32_t)iv[3];
    s.hop = (int32_t)iv[4]; s.center = (int32_t)iv[5]; s.n_frames = (int32_t)iv[6]; s.win_start = (int32_t)iv[7];
    s.win_len = (int32_t)iv[8]; s.power_mode = (int32_t)iv[9]; s.n_mels = (int32_t)iv[10];
    s.denoise = (int32_t)iv[11]; s.threshold = (int32_t)iv[12]; s.out_h = (int32_t)iv[13];
    s.out_w = (int32_t)iv[14]; s.rs_rows = (int32_t)iv[15]; s.out_in_work = (int32_t)iv[16];
    s.power_half = (float)fv[0]; s.log_offset = (float)fv[1]; s.threshold_value = (float)fv[2];
    s.window = tb[T_WINDOW].buf; s.twiddle = tb[T_TWIDDLE].buf; s.bitrev = tb[T_BITREV].buf;
    s.mel_first = tb[T_MEL_FIRST].buf; s.mel_count = tb[T_MEL_COUNT].buf; s.mel_weights = tb[T_MEL_W].buf;
    s.rs_y_first = tb[T_RY_FIRST].buf; s.rs_y_count = tb[T_RY_COUNT].buf; s.rs_y_weights = tb[T_RY_W].buf;
    s.rs_x_first = tb[T_RX_FIRST].buf; s.rs_x_count = tb[T_RX_COUNT].buf; s.rs_x_weights = tb[T_RX_W].buf;
    if (!check_spec(&s, len)) goto done;
    const size_t ni = (size_t)s.n_channels * s.n_samples, no = bsfe_out_floats(&s);
    const size_t nx = (size_t)ab.len / 4, batch = nx / ni;
    if (nx % ni != 0 || (size_t)ob.len / 4 != batch * no) {
        PyErr_Format(PyExc_ValueError, "audio holds %zu floats (need a multiple of %zu) and out %zd floats "
                     "(need %zu per example)", nx, ni, ob.len / 4, no);
        goto done;
    }
    void *work = NULL;
    size_t wb = bsfe_work_bytes(&s);
    if (posix_memalign(&work, 64, wb ? wb : 64) != 0) {
        PyErr_NoMemory();
        goto done;
    }
    const float *a = ab.buf;
    float *o = ob.buf;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < batch; i++) bsfe_run(&s, a + i * ni, o + i * no, work);
    Py_END_ALLOW_THREADS
    free(work);
    ok = 1;
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&tb[i]);
    if (have_a) PyBuffer_Release(&ab);
    if (have_o) PyBuffer_Release(&ob);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}
