// Internals of the C interface shared by its C part (abi.c) and its Swift part (PMLLCABI):
// what a PMLL_Lock holds, and the per-thread state C keeps for Swift. Not installed.
#ifndef PMLL_ABI_H
#define PMLL_ABI_H

#include <pthread.h>
#include <stdint.h>
#include "pmll.h"

#pragma GCC visibility push(hidden)

#define PMLL_ABI_LOCK_MAGIC 0x4b434f4c4c4c4d50ull   // "PMLLLOCK"

enum {
    PMLL_ABI_HELD = 1,          // this PMLL_Lock holds the pool lock
    PMLL_ABI_DIED = 2,          // the acquisition that took it found the previous owner dead
};

// The inside of a PMLL_Lock. The pool lock's entry lives in the shared mapping; the context
// (a retained Swift object) keeps that mapping alive.
typedef struct pmll_abi_lock {
    uint64_t magic;
    void *entry;                        // pmll_lock_entry_t* in the pool mapping
    PMEMContextHandle *context;
    struct pmll_abi_lock *below;        // leveled lock this thread held before this one
    uint32_t token;                     // the context's owner token
    uint32_t index;                     // lock table index
    uint32_t level;                     // PMLL_LockLevel; 0 = not checked
    uint32_t flags;                     // PMLL_ABI_*
    uint32_t reserved0;
    uint32_t generation;                // pmll_abi_fork_generation() of the context's opening
    uint64_t holder_thread;             // pthread_self() of the thread that took it
    uint64_t reserved[4];
} pmll_abi_lock_t;

_Static_assert(sizeof(pmll_abi_lock_t) == sizeof(PMLL_Lock), "PMLL_Lock is the ABI lock");
_Static_assert(_Alignof(pmll_abi_lock_t) <= _Alignof(PMLL_Lock), "PMLL_Lock alignment");

// The calling thread's identity, as cheaply as the platform gives it: the thread pointer (one
// register read, unique per live thread), else pthread_self().
static inline uint64_t pmll_abi_thread_self(void) {
#if defined(__x86_64__)
    uint64_t tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
#elif defined(__aarch64__)
    uint64_t tp;
    __asm__("mrs %0, tpidr_el0" : "=r"(tp));
    return tp;
#else
    return (uint64_t)pthread_self();
#endif
}

// Records which thread holds it: the thread first, then the flags, so that a thread that
// sees HELD also sees the holder that set it (and never mistakes itself for the holder).
static inline void pmll_abi_set_holder(pmll_abi_lock_t *lock, uint32_t flags, uint64_t thread) {
    __atomic_store_n(&lock->holder_thread, thread, __ATOMIC_RELAXED);
    __atomic_store_n(&lock->flags, flags, __ATOMIC_RELEASE);
}

static inline int pmll_abi_held_by(pmll_abi_lock_t *lock, uint64_t thread) {
    return (__atomic_load_n(&lock->flags, __ATOMIC_ACQUIRE) & PMLL_ABI_HELD) != 0
        && __atomic_load_n(&lock->holder_thread, __ATOMIC_RELAXED) == thread;
}

// pmll.h's result macros as constants Swift can import.
static const CPM_Result pmll_abi_lock_timeout = CPM_RESULT_LOCK_TIMEOUT;
static const CPM_Result pmll_abi_not_found = PMLL_RESULT_NOT_FOUND;
static const CPM_Result pmll_abi_hierarchy_violation = PMLL_RESULT_HIERARCHY_VIOLATION;
static const CPM_Result pmll_abi_cancelled = PMLL_RESULT_CANCELLED;
static const CPM_Result pmll_abi_pool_corrupt = PMLL_RESULT_POOL_CORRUPT;
static const CPM_Result pmll_abi_pool_full = PMLL_RESULT_POOL_FULL;
static const CPM_Result pmll_abi_permission = PMLL_RESULT_PERMISSION;
static const CPM_Result pmll_abi_conflict = PMLL_RESULT_CONFLICT;
static const CPM_Result pmll_abi_not_held = PMLL_RESULT_NOT_HELD;
static const CPM_Result pmll_abi_too_large = PMLL_RESULT_TOO_LARGE;
static const CPM_Result pmll_abi_system = PMLL_RESULT_SYSTEM;

// The calling thread's last error (copied; truncated to 1 KiB).
void pmll_abi_set_error(const char *message);
void pmll_abi_clear_error(void);

// The innermost leveled lock the calling thread holds through the C interface.
pmll_abi_lock_t *pmll_abi_held_top(void);
void pmll_abi_set_held_top(pmll_abi_lock_t *lock);
// Removes `lock` from the calling thread's chain of leveled locks, wherever it is.
void pmll_abi_unlink_held(pmll_abi_lock_t *lock);

extern unsigned pmll_abi_fork_generation_value;
// Forks so far in this process's line (0 in the process that loaded the library).
static inline uint32_t pmll_abi_fork_generation(void) {
    return __atomic_load_n(&pmll_abi_fork_generation_value, __ATOMIC_RELAXED);
}

// The reason passed to pmll_operation_fail on this thread since the last call (malloc'd,
// the caller frees it), or NULL.
char *pmll_abi_take_failure(void);

#pragma GCC visibility pop

#endif
