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

// Adds slot i's count to its lock and empties it. Under tally_lock.
static void flush_slot(pmll_bias_tally_t *t, uint32_t i) {
    uint32_t n = __atomic_load_n(&t->count[i], __ATOMIC_RELAXED);
    if (t->entry[i] != NULL && n > 0) add_acquisitions(t->entry[i], n);
    __atomic_store_n(&t->count[i], 0, __ATOMIC_RELAXED);
}

// After any change of t->entry. Under tally_lock.
static void remask(pmll_bias_tally_t *t) {
    uint64_t mask = 0;
    for (uint32_t i = 0; i < PMLL_BIAS_TALLY_LOCKS; i++) {
        if (t->entry[i] != NULL) mask |= pmll_bias_bit(t->entry[i]);
    }
    __atomic_store_n(&t->mask, mask, __ATOMIC_RELAXED);
}

static void forget_all(pmll_bias_tally_t *t) {
    for (uint32_t i = 0; i < PMLL_BIAS_TALLY_LOCKS; i++) {
        flush_slot(t, i);
        __atomic_store_n(&t->entry[i], NULL, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&t->mask, 0, __ATOMIC_RELAXED);
}

static void thread_ends(void *p) {
    pmll_bias_tally_t *t = p;
    pthread_mutex_lock(&tally_lock);
    forget_all(t);
    t->free = 1;
    pthread_mutex_unlock(&tally_lock);
}

static void process_exits(void) {
    pthread_mutex_lock(&tally_lock);
    for (pmll_bias_tally_t *t = tallies; t != NULL; t = t->next) {
        for (uint32_t i = 0; i < PMLL_BIAS_TALLY_LOCKS; i++) flush_slot(t, i);
    }
    pthread_mutex_unlock(&tally_lock);
}

// A forked child must not add its parent's tallies a second time.
static void forked_child(void) {
    pthread_mutex_init(&tally_lock, NULL);
    for (pmll_bias_tally_t *t = tallies; t != NULL; t = t->next) memset(t->count, 0, sizeof t->count);
}

static void tally_init(void) {
    (void)pthread_key_create(&tally_key, thread_ends);
    (void)pthread_atfork(NULL, NULL, forked_child);
    (void)atexit(process_exits);
}

// The calling thread's tally, made on first use; NULL only when out of memory. Under tally_lock.
static pmll_bias_tally_t *own_tally_locked(void) {
    pmll_bias_tally_t *t = pmll_bias_tally;
    if (t != NULL) return t;
    for (t = tallies; t != NULL && !t->free; t = t->next) {}
    void *fresh = NULL;
    // Cache lines of its own: they are written on every biased hold, and a neighbour written by
    // another thread would move the line between cores each time.
    if (t == NULL && posix_memalign(&fresh, 128, 128) == 0) {
        memset(fresh, 0, 128);
        t = fresh;
        t->next = tallies;
        tallies = t;
    }
    if (t == NULL) return NULL;
    t->free = 0;
    pmll_bias_tally = t;
    (void)pthread_setspecific(tally_key, t);
    return t;
}

// The slot of `e` in the thread's tally, taking one (the next in turn, its count added) if
// it has none. UINT32_MAX when out of memory. Under tally_lock.
static uint32_t slot_for_locked(pmll_bias_tally_t *t, pmll_lock_entry_t *e) {
    int i = pmll_bias_slot(e);
    if (i >= 0) return (uint32_t)i;
    uint32_t free = PMLL_BIAS_TALLY_LOCKS;
    for (uint32_t j = 0; j < PMLL_BIAS_TALLY_LOCKS && free == PMLL_BIAS_TALLY_LOCKS; j++) {
        if (t->entry[j] == NULL) free = j;
    }
    if (free == PMLL_BIAS_TALLY_LOCKS) {
        free = t->victim;
        t->victim = (t->victim + 1) % PMLL_BIAS_TALLY_LOCKS;
        flush_slot(t, free);
    }
    __atomic_store_n(&t->entry[free], e, __ATOMIC_RELAXED);
    remask(t);
    return free;
}

void pmll_bias_count_slow(pmll_lock_entry_t *e) {
    pthread_once(&tally_once, tally_init);
    pthread_mutex_lock(&tally_lock);
    pmll_bias_tally_t *t = own_tally_locked();
    if (t == NULL) {
        // Out of memory: count this one directly.
        pthread_mutex_unlock(&tally_lock);
        add_acquisitions(e, 1);
        return;
    }
    uint32_t i = slot_for_locked(t, e);
    flush_slot(t, i);   // a full batch, or a slot just taken
    __atomic_store_n(&t->count[i], 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&tally_lock);
}

void pmll_bias_hint(pmll_lock_entry_t *e, int on) {
    pthread_once(&tally_once, tally_init);
    pthread_mutex_lock(&tally_lock);
    pmll_bias_tally_t *t = own_tally_locked();
    if (t != NULL && on) {
        (void)slot_for_locked(t, e);
    } else if (t != NULL) {
        int i = pmll_bias_slot(e);
        if (i >= 0) {
            flush_slot(t, (uint32_t)i);
            __atomic_store_n(&t->entry[i], NULL, __ATOMIC_RELAXED);
            remask(t);
        }
    }
    pthread_mutex_unlock(&tally_lock);
}

uint64_t pmll_bias_pending(const pmll_lock_entry_t *e) {
    uint64_t n = 0;
    pthread_mutex_lock(&tally_lock);
    for (pmll_bias_tally_t *t = tallies; t != NULL; t = t->next) {
        for (uint32_t i = 0; i < PMLL_BIAS_TALLY_LOCKS; i++) {
            if (t->entry[i] == e) n += __atomic_load_n(&t->count[i], __ATOMIC_RELAXED);
        }
    }
    pthread_mutex_unlock(&tally_lock);
    return n;
}

void pmll_bias_flush_range(const void *base, uint64_t length) {
    const char *lo = base, *hi = lo + length;
    pthread_mutex_lock(&tally_lock);
    for (pmll_bias_tally_t *t = tallies; t != NULL; t = t->next) {
        for (uint32_t i = 0; i < PMLL_BIAS_TALLY_LOCKS; i++) {
            const char *p = (const char *)t->entry[i];
            if (p >= lo && p < hi) {
                flush_slot(t, i);
                __atomic_store_n(&t->entry[i], NULL, __ATOMIC_RELAXED);
            }
        }
        remask(t);
    }
    pthread_mutex_unlock(&tally_lock);
}
