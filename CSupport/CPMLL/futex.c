#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// An absolute CLOCK_MONOTONIC deadline in `ts`, or NULL for none (deadline_ns < 0).
static struct timespec *deadline_timespec(int64_t deadline_ns, struct timespec *ts) {
    if (deadline_ns < 0) return NULL;
    ts->tv_sec = deadline_ns / 1000000000;
    ts->tv_nsec = deadline_ns % 1000000000;
    return ts;
}

// FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a retry after EINTR does
// not stretch the wait.
static int futex_wait_until(uint32_t *word, int op, uint32_t expected, int64_t deadline_ns) {
    struct timespec ts;
    long rc = syscall(SYS_futex, word, op, expected, deadline_timespec(deadline_ns, &ts), NULL, FUTEX_BITSET_MATCH_ANY);
    return rc == 0 ? 0 : -errno;
}

int pmll_futex_wait(uint32_t *word, uint32_t expected, int64_t deadline_ns) {
    return futex_wait_until(word, FUTEX_WAIT_BITSET, expected, deadline_ns);
}

int pmll_futex_wake(uint32_t *word, int32_t count) {
    long rc = syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
    return rc >= 0 ? (int)rc : -errno;
}

int pmll_wakeword_bump(uint32_t *word) {
    uint32_t old = __atomic_load_n(word, __ATOMIC_RELAXED), next;
    do {
        next = (old + 1) & ~PMLL_WAKEWORD_SLEEPERS;
    } while (!__atomic_compare_exchange_n(word, &old, next, 1, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    if (!(old & PMLL_WAKEWORD_SLEEPERS)) return 0;
    int rc = pmll_futex_wake(word, INT32_MAX);
    return rc < 0 ? rc : 1;
}


// FUTEX2_SIZE_U32 and FUTEX2_PRIVATE are in linux/futex.h only from 6.7; their values are ABI.
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif
#ifndef FUTEX2_PRIVATE
#define FUTEX2_PRIVATE FUTEX_PRIVATE_FLAG
#endif

int pmll_futex_waitv(const pmll_futex_waiter_t *waiters, uint32_t count, int64_t deadline_ns) {
    if (count == 0 || count > PMLL_FUTEX_WAITV_MAX) return -EINVAL;
    struct futex_waitv v[FUTEX_WAITV_MAX];
    for (uint32_t i = 0; i < count; i++) {
        v[i].val = waiters[i].expected;
        v[i].uaddr = (uint64_t)(uintptr_t)waiters[i].word;
        v[i].flags = FUTEX2_SIZE_U32 | (waiters[i].process_private ? FUTEX2_PRIVATE : 0);
        v[i].__reserved = 0;
    }
    struct timespec ts;
    long rc = syscall(SYS_futex_waitv, v, count, 0, deadline_timespec(deadline_ns, &ts), CLOCK_MONOTONIC);
    return rc >= 0 ? (int)rc : -errno;
}

int pmll_futex_wake_private(uint32_t *word, int32_t count) {
    long rc = syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
    return rc >= 0 ? (int)rc : -errno;
}

int pmll_futex_wait_private(uint32_t *word, uint32_t expected, int64_t deadline_ns) {
    return futex_wait_until(word, FUTEX_WAIT_BITSET_PRIVATE, expected, deadline_ns);
}
