#include "cpmll.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

// Shared acquisitions through the reader bias, tallied per thread (see cpmll.h). Tallies are
// never freed: a thread that exits hands its tally back for the next new thread, so their
// number is the most threads this process ever ran at once that took biased holds.

__thread pmll_bias_tally_t *pmll_bias_tally;

static pmll_bias_tally_t *tallies;   // every tally ever made, newest first
static pthread_mutex_t tally_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t tally_key;
static pthread_once_t tally_once = PTHREAD_ONCE_INIT;

// Adds `n` acquisitions to the lock's count (the high half of `readers`, wraps beside it).
static void add_acquisitions(pmll_lock_entry_t *e, uint64_t n) {
    uint64_t before = __atomic_fetch_add(&e->readers, n << 32, __ATOMIC_RELAXED);
    if ((before >> 32) + n > 0xFFFFFFFFull) __atomic_fetch_add(&e->shared.acquisition_wraps, 1, __ATOMIC_RELAXED);
}

// Under tally_lock.
static void flush_locked(pmll_bias_tally_t *t) {
    uint32_t n = __atomic_load_n(&t->count, __ATOMIC_RELAXED);
    if (t->entry != NULL && n > 0) add_acquisitions(t->entry, n);
    __atomic_store_n(&t->count, 0, __ATOMIC_RELAXED);
}

static void thread_ends(void *p) {
    pmll_bias_tally_t *t = p;
    pthread_mutex_lock(&tally_lock);
    flush_locked(t);
    t->entry = NULL;
    t->free = 1;
    pthread_mutex_unlock(&tally_lock);
}

static void process_exits(void) {
    pthread_mutex_lock(&tally_lock);
    for (pmll_bias_tally_t *t = tallies; t != NULL; t = t->next) flush_locked(t);
    pthread_mutex_unlock(&tally_lock);
}

// A forked child must not add its parent's tallies a second time.
static void forked_child(void) {
    pthread_mutex_init(&tally_lock, NULL);
    for (pmll_bias_tally_t *t = tallies; t != NULL; t = t->next) t->count = 0;
}

static void tally_init(void) {
    (void)pthread_key_create(&tally_key, thread_ends);
    (void)pthread_atfork(NULL, NULL, forked_child);
    (void)atexit(process_exits);
}

void pmll_bias_count_slow(pmll_lock_entry_t *e) {
    pthread_once(&tally_once, tally_init);
    pthread_mutex_lock(&tally_lock);
    pmll_bias_tally_t *t = pmll_bias_tally;
    if (t == NULL) {
        for (t = tallies; t != NULL && !t->free; t = t->next) {}
        // A cache line of its own: it is written on every biased hold, and a neighbour
        // written by another thread would move the line between cores each time.
        void *fresh = NULL;
        if (t == NULL && posix_memalign(&fresh, 64, 64) == 0) {
            memset(fresh, 0, 64);
            t = fresh;
            t->next = tallies;
            tallies = t;
        }
        if (t == NULL) {
            // Out of memory: count this one directly.
            pthread_mutex_unlock(&tally_lock);
            add_acquisitions(e, 1);
            return;
        }
        t->free = 0;
        pmll_bias_tally = t;
        (void)pthread_setspecific(tally_key, t);
    }
    flush_locked(t);
    t->entry = e;
    __atomic_store_n(&t->count, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&tally_lock);
}

uint64_t pmll_bias_pending(const pmll_lock_entry_t *e) {
    uint64_t n = 0;
    pthread_mutex_lock(&tally_lock);
    for (pmll_bias_tally_t *t = tallies; t != NULL; t = t->next) {
        if (t->entry == e) n += __atomic_load_n(&t->count, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&tally_lock);
    return n;
}

void pmll_bias_flush_range(const void *base, uint64_t length) {
    const char *lo = base, *hi = lo + length;
    pthread_mutex_lock(&tally_lock);
    for (pmll_bias_tally_t *t = tallies; t != NULL; t = t->next) {
        const char *p = (const char *)t->entry;
        if (p >= lo && p < hi) {
            flush_locked(t);
            t->entry = NULL;
        }
    }
    pthread_mutex_unlock(&tally_lock);
}
