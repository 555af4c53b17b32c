/* pool.c: a small pthreads pool for the engine (bs_pool in bsnn.h).
 *
 * threads - 1 workers plus the calling thread take the tasks of a job one at a time from a shared
 * counter, so uneven tasks balance; the caller returns when every worker has left the job. Jobs
 * come in quick succession while a model runs (one per binary conv), so a worker that finished
 * one spins for a short while (BS_SPIN_SECONDS) before it sleeps on a condition variable: waking a
 * sleeping thread costs tens of microseconds, as long as a small layer. Which thread runs a task
 * never changes its result: tasks write disjoint outputs and each computes them alone.
 */
#include <stdlib.h>
#include <string.h>

#include "bsnn.h"

#define BS_SPIN_SECONDS 2e-4

#if defined(_WIN32)
/* no pthreads: one thread only */
struct bs_pool {
    int threads;
};
int bs_pool_create(int threads, size_t scratch_bytes, bs_pool **out) {
    (void)scratch_bytes;
    *out = NULL;
    if (threads != 1) return BS_ERR_UNSUPPORTED;
    *out = calloc(1, sizeof(bs_pool));
    if (!*out) return BS_ERR_NOMEM;
    (*out)->threads = 1;
    return BS_OK;
}
void bs_pool_free(bs_pool *p) { free(p); }
int bs_pool_threads(const bs_pool *p) { return p ? p->threads : 1; }
void *bs_pool_scratch(bs_pool *p, int tid) { (void)p; (void)tid; return NULL; }
void bs_pool_run(bs_pool *p, int ntasks, bs_task_fn fn, void *ctx) {
    (void)p;
    for (int t = 0; t < ntasks; t++) fn(ctx, t, 0);
}
#else
#include <pthread.h>

typedef struct {
    bs_pool *pool;
    int id;
} worker_arg;

struct bs_pool {
    int threads;
    pthread_t *th;
    worker_arg *args;
    void **scratch;          /* [threads], entry 0 unused */
    pthread_mutex_t run_lock; /* one job at a time */
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    bs_task_fn fn;
    void *ctx;
    int ntasks;
    int next;      /* the next task to take (atomic) */
    int active;    /* workers still in the job (atomic) */
    unsigned gen;  /* job number (atomic); a worker starts a job when it changes */
    int quit;
};

static inline void cpu_relax(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#endif
}

static void take_tasks(bs_pool *p, int id) {
    for (;;) {
        int t = __atomic_fetch_add(&p->next, 1, __ATOMIC_ACQ_REL);
        if (t >= p->ntasks) break;
        p->fn(p->ctx, t, id);
    }
}

static void *worker(void *arg) {
    bs_pool *p = ((worker_arg *)arg)->pool;
    const int id = ((worker_arg *)arg)->id;
    unsigned seen = 0;
    for (;;) {
        double t_end = bs_now() + BS_SPIN_SECONDS;
        for (int i = 0; __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen; i++) {
            if ((i & 255) == 255 && bs_now() > t_end) {
                pthread_mutex_lock(&p->mu);
                while (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen) pthread_cond_wait(&p->start, &p->mu);
                pthread_mutex_unlock(&p->mu);
                break;
            }
            cpu_relax();
        }
        seen = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE)) break;
        take_tasks(p, id);
        if (__atomic_sub_fetch(&p->active, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

static void stop_workers(bs_pool *p, int started) {
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->quit, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < started; i++) pthread_join(p->th[i], NULL);
}

void bs_pool_free(bs_pool *p) {
    if (!p) return;
    if (p->th) stop_workers(p, p->threads - 1);
    for (int i = 1; p->scratch && i < p->threads; i++) free(p->scratch[i]);
    free(p->scratch);
    free(p->th);
    free(p->args);
    pthread_mutex_destroy(&p->run_lock);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p);
}

int bs_pool_create(int threads, size_t scratch_bytes, bs_pool **out) {
    *out = NULL;
    if (threads < 1 || threads > 1024) return BS_ERR_ARG;
    bs_pool *p = calloc(1, sizeof *p);
    if (!p) return BS_ERR_NOMEM;
    p->threads = threads;
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    if (threads == 1) {
        *out = p;
        return BS_OK;
    }
    p->scratch = calloc((size_t)threads, sizeof(void *));
    p->args = calloc((size_t)threads, sizeof(worker_arg));
    if (!p->scratch || !p->args) {
        bs_pool_free(p);
        return BS_ERR_NOMEM;
    }
    for (int i = 1; i < threads; i++)
        if (posix_memalign(&p->scratch[i], 64, scratch_bytes ? scratch_bytes : 64) != 0) {
            p->scratch[i] = NULL;
            bs_pool_free(p);
            return BS_ERR_NOMEM;
        }
    p->th = calloc((size_t)threads - 1, sizeof(pthread_t));
    if (!p->th) {
        bs_pool_free(p);
        return BS_ERR_NOMEM;
    }
    for (int i = 1; i < threads; i++) {
        p->args[i].pool = p;
        p->args[i].id = i;
        if (pthread_create(&p->th[i - 1], NULL, worker, &p->args[i]) != 0) {
            stop_workers(p, i - 1);
            free(p->th);
            p->th = NULL;
            bs_pool_free(p);
            return BS_ERR_NOMEM;
        }
    }
    *out = p;
    return BS_OK;
}

int bs_pool_threads(const bs_pool *p) { return p ? p->threads : 1; }

void *bs_pool_scratch(bs_pool *p, int tid) { return tid >= 1 && tid < p->threads ? p->scratch[tid] : NULL; }

void bs_pool_run(bs_pool *p, int ntasks, bs_task_fn fn, void *ctx) {
    if (!p || p->threads == 1 || ntasks <= 1) {
        for (int t = 0; t < ntasks; t++) fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->run_lock);
    p->fn = fn;
    p->ctx = ctx;
    p->ntasks = ntasks;
    __atomic_store_n(&p->next, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->active, p->threads - 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&p->mu);
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_ACQ_REL); /* publishes the job to the workers */
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    take_tasks(p, 0);
    double t_end = bs_now() + BS_SPIN_SECONDS;
    for (int i = 0; __atomic_load_n(&p->active, __ATOMIC_ACQUIRE) != 0; i++) {
        if ((i & 255) == 255 && bs_now() > t_end) {
            pthread_mutex_lock(&p->mu);
            while (__atomic_load_n(&p->active, __ATOMIC_ACQUIRE) != 0) pthread_cond_wait(&p->done, &p->mu);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        cpu_relax();
    }
    pthread_mutex_unlock(&p->run_lock);
}
#endif
