/* _engine.c: CPython binding of the bsnn engine (C API + buffer protocol; no numpy headers).
 *
 *   Model(data: bytes-like, isa: str = "auto", threads: int = 1, bconv: str = "auto")
 *                                                   load + validate; FormatError on a bad file;
 *                                                   bconv forces a binary conv form where it applies
 *   Model.predict(x, out)                           x float32 [batch * input numel], out float32
 *                                                   [batch * n_outputs], both C-contiguous; with
 *                                                   threads > 1 a batch of >= threads examples is
 *                                                   split by example, a smaller one by pixel blocks
 *   Model.forms() -> list[str]                      each op's binary conv form ("" for other ops)
 *   Model.trace(x) -> list[bytes]                   each op's output for one example
 *   Model.time_op(x, index, repeats) -> list[float] seconds of each run of op `index`
 *   Model.ops() -> list[tuple]                      (type, name, in0, in1, out, (h, w, c, dtype))
 *   available_isas(), auto_isa(), peak(method, seconds), status_names()
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "bsnn.h"

static PyObject *FormatError;

typedef struct {
    PyObject_HEAD
    bs_model *m;
    const bs_kernels *k;
    bs_pool *pool; /* NULL for one thread */
    int threads;
} ModelObject;

static const char *FORM_NAMES[] = {"word", "serial", "slice"};

static void Model_dealloc(ModelObject *self) {
    bs_pool_free(self->pool);
    bs_model_free(self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void raise_status(int code, const char *msg) {
    PyObject *args = Py_BuildValue("(iss)", code, bs_status_name(code), msg);
    if (args) {
        PyErr_SetObject(FormatError, args);
        Py_DECREF(args);
    }
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "isa", "threads", "bconv", NULL};
    Py_buffer buf;
    const char *isa = "auto", *bconv = "auto";
    int threads = 1, forced = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|sis", kwlist, &buf, &isa, &threads, &bconv)) return -1;
    if (threads < 1 || threads > 256) {
        PyBuffer_Release(&buf);
        PyErr_Format(PyExc_ValueError, "threads must be in [1, 256], got %d", threads);
        return -1;
    }
    for (int f = 0; f < 3; f++)
        if (!strcmp(bconv, FORM_NAMES[f])) forced = f;
    if (forced < 0 && strcmp(bconv, "auto") != 0) {
        PyBuffer_Release(&buf);
        PyErr_Format(PyExc_ValueError, "bconv must be one of auto, word, serial, slice, got '%s'", bconv);
        return -1;
    }
    int st;
    const bs_kernels *k = bs_kernels_get(isa, &st);
    if (!k) {
        PyBuffer_Release(&buf);
        char msg[200];
        snprintf(msg, sizeof msg, "instruction set '%s' is %s on this machine", isa,
                 st == BS_ERR_ISA ? "not available" : "unknown");
        raise_status(st, msg);
        return -1;
    }
    char msg[512];
    bs_model *m = NULL;
    Py_BEGIN_ALLOW_THREADS
    st = bs_model_load((const uint8_t *)buf.buf, (size_t)buf.len, &m, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (st != BS_OK) {
        raise_status(st, msg);
        return -1;
    }
    if ((st = bs_model_set_forms(m, k, forced)) != BS_OK) { /* the loader's forms fit: not expected */
        bs_model_free(m);
        snprintf(msg, sizeof msg, "the model needs more than %zu bytes of working memory with '%s'",
                 (size_t)BS_MAX_ARENA, k->name);
        raise_status(st, msg);
        return -1;
    }
    bs_pool *pool = NULL;
    if (threads > 1 && (st = bs_pool_create(threads, bs_model_thread_bytes(m), &pool)) != BS_OK) {
        bs_model_free(m);
        snprintf(msg, sizeof msg, "could not start a pool of %d threads", threads);
        raise_status(st, msg);
        return -1;
    }
    bs_pool_free(self->pool);
    bs_model_free(self->m);
    self->m = m;
    self->k = k;
    self->pool = pool;
    self->threads = threads;
    return 0;
}

static int ready(ModelObject *self) {
    if (!self->m) {
        PyErr_SetString(PyExc_RuntimeError, "model not loaded");
        return 0;
    }
    return 1;
}

static size_t in_numel(const bs_model *m) { return (size_t)m->in_c * m->in_h * m->in_w; }

static int get_f32(PyObject *obj, Py_buffer *b, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, b, flags) < 0) return 0;
    if (b->itemsize != 4 || !b->format || strcmp(b->format, "f") != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous float32 buffer, got format '%s'", what,
                     b->format ? b->format : "?");
        PyBuffer_Release(b);
        return 0;
    }
    return 1;
}

static void *arena_alloc(const bs_model *m) {
    void *p = NULL;
    size_t n = bs_model_arena_bytes(m);
    if (posix_memalign(&p, 64, n ? n : 64) != 0) return NULL;
    return p;
}

typedef struct {
    const bs_model *m;
    const bs_kernels *k;
    const float *x;
    float *out;
    size_t ni, no;
    void **arenas; /* one per thread */
} predict_job;

static void predict_task(void *ctx, int task, int tid) {
    const predict_job *j = (const predict_job *)ctx;
    bs_model_run(j->m, j->k, j->x + (size_t)task * j->ni, j->arenas[tid], j->m->n_ops);
    memcpy(j->out + (size_t)task * j->no, bs_model_output(j->m, j->arenas[tid]), j->no * sizeof(float));
}

static PyObject *Model_predict(ModelObject *self, PyObject *args) {
    PyObject *xo, *oo;
    if (!ready(self) || !PyArg_ParseTuple(args, "OO", &xo, &oo)) return NULL;
    Py_buffer xb, ob;
    if (!get_f32(xo, &xb, 0, "features")) return NULL;
    if (!get_f32(oo, &ob, 1, "out")) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    const bs_model *m = self->m;
    size_t ni = in_numel(m), no = (size_t)m->n_out;
    size_t nx = (size_t)xb.len / 4, batch = nx / ni;
    if (nx % ni != 0 || (size_t)ob.len / 4 != batch * no) {
        PyErr_Format(PyExc_ValueError, "features hold %zu floats (need a multiple of %zu) and out %zd floats "
                     "(need %zu per example)", nx, ni, ob.len / 4, no);
        PyBuffer_Release(&xb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    /* a batch of at least `threads` examples: one example per task, an arena per thread; a smaller
     * one: example by example, each binary conv's pixel blocks over the threads */
    const int by_example = self->pool && batch >= (size_t)self->threads;
    const int narenas = by_example ? self->threads : 1;
    void *arenas[256] = {NULL};
    for (int t = 0; t < narenas; t++)
        if (!(arenas[t] = arena_alloc(m))) {
            for (int u = 0; u < t; u++) free(arenas[u]);
            PyBuffer_Release(&xb);
            PyBuffer_Release(&ob);
            return PyErr_NoMemory();
        }
    predict_job job = {m, self->k, xb.buf, ob.buf, ni, no, arenas};
    Py_BEGIN_ALLOW_THREADS
    if (by_example) {
        bs_pool_run(self->pool, (int)batch, predict_task, &job);
    } else {
        for (size_t i = 0; i < batch; i++) {
            bs_model_run_pool(m, self->k, self->pool, job.x + i * ni, arenas[0], m->n_ops);
            memcpy(job.out + i * no, bs_model_output(m, arenas[0]), no * sizeof(float));
        }
    }
    Py_END_ALLOW_THREADS
    for (int t = 0; t < narenas; t++) free(arenas[t]);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    Py_RETURN_NONE;
}

static PyObject *Model_trace(ModelObject *self, PyObject *args) {
    PyObject *xo;
    if (!ready(self) || !PyArg_ParseTuple(args, "O", &xo)) return NULL;
    Py_buffer xb;
    if (!get_f32(xo, &xb, 0, "features")) return NULL;
    const bs_model *m = self->m;
    if ((size_t)xb.len / 4 != in_numel(m)) {
        PyErr_Format(PyExc_ValueError, "trace takes one example of %zu floats, got %zd", in_numel(m), xb.len / 4);
        PyBuffer_Release(&xb);
        return NULL;
    }
    void *arena = arena_alloc(m);
    PyObject *list = arena ? PyList_New(m->n_ops) : NULL;
    if (!list) {
        free(arena);
        PyBuffer_Release(&xb);
        return arena ? NULL : PyErr_NoMemory();
    }
    for (int i = 0; i < m->n_ops; i++) {
        const bs_op *op = &m->ops[i];
        if (i == 0)
            bs_model_run(m, self->k, xb.buf, arena, 1);
        else
            bs_run_op_pool(m, self->k, self->pool, i, arena);
        PyObject *b = PyBytes_FromStringAndSize((const char *)arena + m->slot_off[op->out],
                                                (Py_ssize_t)bs_shape_bytes(op->so));
        if (!b) {
            Py_DECREF(list);
            list = NULL;
            break;
        }
        PyList_SET_ITEM(list, i, b);
    }
    free(arena);
    PyBuffer_Release(&xb);
    return list;
}

static PyObject *Model_time_op(ModelObject *self, PyObject *args) {
    PyObject *xo;
    int index, repeats;
    if (!ready(self) || !PyArg_ParseTuple(args, "Oii", &xo, &index, &repeats)) return NULL;
    const bs_model *m = self->m;
    if (index < 0 || index >= m->n_ops || repeats < 1) {
        PyErr_Format(PyExc_ValueError, "op index %d outside [0, %d) or repeats %d < 1", index, m->n_ops, repeats);
        return NULL;
    }
    Py_buffer xb;
    if (!get_f32(xo, &xb, 0, "features")) return NULL;
    if ((size_t)xb.len / 4 != in_numel(m)) {
        PyErr_Format(PyExc_ValueError, "time_op takes one example of %zu floats", in_numel(m));
        PyBuffer_Release(&xb);
        return NULL;
    }
    void *arena = arena_alloc(m);
    double *t = malloc(sizeof(double) * (size_t)repeats);
    if (!arena || !t) {
        free(arena);
        free(t);
        PyBuffer_Release(&xb);
        return PyErr_NoMemory();
    }
    const float *x = xb.buf;
    Py_BEGIN_ALLOW_THREADS
    bs_model_run_pool(m, self->k, self->pool, x, arena, index + 1);
    for (int r = 0; r < repeats; r++) {
        double t0 = bs_now();
        if (m->ops[index].type == BS_OP_INPUT)
            bs_model_run(m, self->k, x, arena, 1);
        else
            bs_run_op_pool(m, self->k, self->pool, index, arena);
        t[r] = bs_now() - t0;
    }
    Py_END_ALLOW_THREADS
    PyObject *list = PyList_New(repeats);
    for (int r = 0; list && r < repeats; r++) PyList_SET_ITEM(list, r, PyFloat_FromDouble(t[r]));
    free(arena);
    free(t);
    PyBuffer_Release(&xb);
    return list;
}

static PyObject *Model_ops(ModelObject *self, PyObject *unused) {
    (void)unused;
    if (!ready(self)) return NULL;
    const bs_model *m = self->m;
    PyObject *list = PyList_New(m->n_ops);
    if (!list) return NULL;
    for (int i = 0; i < m->n_ops; i++) {
        const bs_op *op = &m->ops[i];
        PyObject *t = Py_BuildValue("(isiii(iiii))", op->type, op->name, op->in0, op->in1, op->out, op->so.h,
                                    op->so.w, op->so.c, op->so.dtype);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

/* the form each binary conv runs in with this model's kernels ("" for the other ops) */
static PyObject *Model_forms(ModelObject *self, PyObject *unused) {
    (void)unused;
    if (!ready(self)) return NULL;
    const bs_model *m = self->m;
    PyObject *list = PyList_New(m->n_ops);
    for (int i = 0; list && i < m->n_ops; i++) {
        const bs_op *op = &m->ops[i];
        const char *name = "";
        if (op->type == BS_OP_BINARY_CONV2D || op->type == BS_OP_BINARY_CONV1D) {
            if (self->k->reference) name = "reference";
            else if (op->groups != 1) name = "grouped";
            else name = FORM_NAMES[bs_op_run_form(op, self->k)];
        }
        PyObject *s = PyUnicode_FromString(name);
        if (!s) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, s);
    }
    return list;
}

static PyObject *Model_get_threads(ModelObject *self, void *c) {
    (void)c;
    return PyLong_FromLong(self->threads > 0 ? self->threads : 1);
}

static PyObject *Model_get_isa(ModelObject *self, void *c) {
    (void)c;
    return PyUnicode_FromString(self->k ? self->k->name : "");
}

static PyObject *Model_get_meta(ModelObject *self, void *c) {
    (void)c;
    if (!ready(self)) return NULL;
    if (!self->m->meta) Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(self->m->meta, (Py_ssize_t)self->m->meta_len, "replace");
}

static PyObject *Model_get_input(ModelObject *self, void *c) {
    (void)c;
    if (!ready(self)) return NULL;
    const bs_model *m = self->m;
    if (m->in_rank == 1) return Py_BuildValue("(ii)", m->in_c, m->in_w);
    return Py_BuildValue("(iii)", m->in_c, m->in_h, m->in_w);
}

static PyObject *Model_get_nout(ModelObject *self, void *c) {
    (void)c;
    if (!ready(self)) return NULL;
    return PyLong_FromLong(self->m->n_out);
}

static PyObject *Model_get_version(ModelObject *self, void *c) {
    (void)c;
    if (!ready(self)) return NULL;
    return Py_BuildValue("(ii)", self->m->version_major, self->m->version_minor);
}

static PyObject *Model_get_arena(ModelObject *self, void *c) {
    (void)c;
    if (!ready(self)) return NULL;
    return PyLong_FromSize_t(bs_model_arena_bytes(self->m));
}

static PyMethodDef Model_methods[] = {
    {"predict", (PyCFunction)Model_predict, METH_VARARGS, "predict(x, out): run every example of x into out"},
    {"trace", (PyCFunction)Model_trace, METH_VARARGS, "trace(x) -> list of each op's output bytes"},
    {"time_op", (PyCFunction)Model_time_op, METH_VARARGS, "time_op(x, index, repeats) -> seconds per run"},
    {"ops", (PyCFunction)Model_ops, METH_NOARGS, "ops() -> list of (type, name, in0, in1, out, shape)"},
    {"forms", (PyCFunction)Model_forms, METH_NOARGS, "forms() -> each op's binary conv form"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Model_getset[] = {
    {"isa", (getter)Model_get_isa, NULL, "instruction set in use", NULL},
    {"threads", (getter)Model_get_threads, NULL, "threads of a run", NULL},
    {"meta", (getter)Model_get_meta, NULL, "metadata JSON text or None", NULL},
    {"input_shape", (getter)Model_get_input, NULL, "feature shape of one example", NULL},
    {"n_outputs", (getter)Model_get_nout, NULL, "logits per example", NULL},
    {"version", (getter)Model_get_version, NULL, "format version of the file", NULL},
    {"arena_bytes", (getter)Model_get_arena, NULL, "working memory of one run", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bitsound.engine._engine.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A loaded, validated bsnn model.",
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
    .tp_init = (initproc)Model_init,
    .tp_new = PyType_GenericNew,
};


static PyObject *py_available_isas(PyObject *mod, PyObject *unused) {
    (void)mod;
    (void)unused;
    PyObject *list = PyList_New(0);
    /* BS_ISA_NAMES (generated from bitsound.graph.opcodes.ISAS) lists the fastest first; the
     * listing goes from the reference up */
    int n = 0;
    while (BS_ISA_NAMES[n]) n++;
    for (int i = n - 1; list && i >= 0; i--)
        if (bs_isa_available(BS_ISA_NAMES[i])) {
            PyObject *s = PyUnicode_FromString(BS_ISA_NAMES[i]);
            if (!s || PyList_Append(list, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(s);
        }
    return list;
}

static PyObject *py_isa_available(PyObject *mod, PyObject *args) {
    (void)mod;
    const char *isa;
    if (!PyArg_ParseTuple(args, "s", &isa)) return NULL;
    return PyBool_FromLong(bs_isa_available(isa));
}

static PyObject *py_auto_isa(PyObject *mod, PyObject *unused) {
    (void)mod;
    (void)unused;
    return PyUnicode_FromString(bs_isa_auto());
}

static PyObject *py_peak(PyObject *mod, PyObject *args) {
    (void)mod;
    const char *method;
    double seconds;
    if (!PyArg_ParseTuple(args, "sd", &method, &seconds)) return NULL;
    if (seconds < 0 || seconds > 60) {
        PyErr_SetString(PyExc_ValueError, "seconds must be in [0, 60]");
        return NULL;
    }
    double r = -1;
    Py_BEGIN_ALLOW_THREADS
    if (!strcmp(method, "scalar")) r = bs_peak_scalar(seconds);
#ifdef BS_X86
    else if (!strcmp(method, "popcnt") && __builtin_cpu_supports("popcnt")) r = bs_peak_popcnt(seconds);
    else if (!strcmp(method, "avx2-lut") && bs_isa_available("avx2")) r = bs_peak_avx2_lut(seconds);
    else if (!strcmp(method, "avx2-harley-seal") && bs_isa_available("avx2")) r = bs_peak_avx2_hs(seconds);
    else if (!strcmp(method, "avx512") && bs_isa_available("avx512")) r = bs_peak_avx512(seconds);
#endif
    Py_END_ALLOW_THREADS
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "peak method '%s' is unknown or not available on this CPU", method);
        return NULL;
    }
    return PyFloat_FromDouble(r);
}

/* _pool_check(threads, seconds): the pool's tasks run at the same time. One task per thread; each
 * waits (up to seconds) until all have started, which only a pool whose threads run concurrently
 * lets happen: returns how many saw all the others (tests) */
typedef struct {
    int n, arrived, ok;
    double deadline;
} barrier_job;

static void barrier_task(void *ctx, int task, int tid) {
    (void)task;
    (void)tid;
    barrier_job *b = (barrier_job *)ctx;
    __atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&b->arrived, __ATOMIC_ACQUIRE) < b->n)
        if (bs_now() > b->deadline) return;
    __atomic_add_fetch(&b->ok, 1, __ATOMIC_ACQ_REL);
}

static PyObject *py_pool_check(PyObject *mod, PyObject *args) {
    (void)mod;
    int threads;
    double seconds;
    if (!PyArg_ParseTuple(args, "id", &threads, &seconds)) return NULL;
    if (threads < 1 || threads > 256 || seconds < 0 || seconds > 60) {
        PyErr_SetString(PyExc_ValueError, "threads must be in [1, 256] and seconds in [0, 60]");
        return NULL;
    }
    bs_pool *pool = NULL;
    int st = bs_pool_create(threads, 0, &pool);
    if (st != BS_OK) {
        PyErr_Format(PyExc_RuntimeError, "could not start a pool of %d threads (%s)", threads, bs_status_name(st));
        return NULL;
    }
    barrier_job b = {threads, 0, 0, 0.0};
    Py_BEGIN_ALLOW_THREADS
    b.deadline = bs_now() + seconds;
    bs_pool_run(pool, threads, barrier_task, &b);
    Py_END_ALLOW_THREADS
    bs_pool_free(pool);
    return PyLong_FromLong(b.ok);
}

static PyObject *py_status_names(PyObject *mod, PyObject *unused) {
    (void)mod;
    (void)unused;
    PyObject *d = PyDict_New();
    for (int i = 0; d && i <= BS_ERR_UNSUPPORTED; i++) {
        PyObject *k = PyLong_FromLong(i), *v = PyUnicode_FromString(bs_status_name(i));
        if (!k || !v || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return d;
}

/* the C front end's entry point (_frontend.c) */
PyObject *bs_py_frontend_run(PyObject *mod, PyObject *args);

static PyMethodDef module_methods[] = {
    {"available_isas", py_available_isas, METH_NOARGS, "instruction sets this CPU can run"},
    {"frontend_run", bs_py_frontend_run, METH_VARARGS,
     "frontend_run(ints, floats, tables, audio, out): the C front end (bitsound.engine.frontend.run)"},
    {"auto_isa", py_auto_isa, METH_NOARGS, "the instruction set 'auto' picks"},
    {"isa_available", py_isa_available, METH_VARARGS, "isa_available(name): also the test-only variants"},
    {"peak", py_peak, METH_VARARGS, "peak(method, seconds) -> xor+popcount bit operations per second"},
    {"status_names", py_status_names, METH_NOARGS, "status code -> name"},
    {"_pool_check", py_pool_check, METH_VARARGS, "_pool_check(threads, seconds): tasks that ran concurrently"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_engine", "bsnn engine binding", -1,
                                       module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__engine(void) {
    if (PyType_Ready(&ModelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    FormatError = PyErr_NewException("bitsound.engine._engine.FormatError", PyExc_ValueError, NULL);
    if (!FormatError || PyModule_AddObject(m, "FormatError", FormatError) < 0) {
        Py_XDECREF(FormatError);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(FormatError);
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(&ModelType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "FORMAT_MAJOR", BSNN_VERSION_MAJOR);
    PyModule_AddIntConstant(m, "FORMAT_MINOR", BSNN_VERSION_MINOR);
    return m;
}
