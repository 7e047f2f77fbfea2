// The C side of the C interface: per-thread error text and the per-thread chain of leveled
// locks (thread-locals are C's to keep; Swift has none).
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include "pmll_abi.h"

static _Thread_local char last_error[1024];
static _Thread_local pmll_abi_lock_t *held_top;

// Counts forks in this process's line: a context (and every lock bound to it) belongs to the
// generation that opened it, so a forked child cannot use its parent's participant by mistake.
unsigned pmll_abi_fork_generation_value;

static void pmll_abi_forked_child(void) {
    __atomic_add_fetch(&pmll_abi_fork_generation_value, 1, __ATOMIC_RELAXED);
    held_top = NULL;   // the child's only thread holds nothing through the parent's locks
}

__attribute__((constructor)) static void pmll_abi_install_fork_handler(void) {
    pthread_atfork(NULL, NULL, pmll_abi_forked_child);
}

const char *pmll_last_error(void) { return last_error; }

void pmll_abi_set_error(const char *message) {
    size_t n = strlen(message);
    if (n >= sizeof last_error) n = sizeof last_error - 1;
    memcpy(last_error, message, n);
    last_error[n] = 0;
}

void pmll_abi_clear_error(void) { last_error[0] = 0; }

pmll_abi_lock_t *pmll_abi_held_top(void) { return held_top; }
void pmll_abi_set_held_top(pmll_abi_lock_t *lock) { held_top = lock; }

void pmll_abi_unlink_held(pmll_abi_lock_t *lock) {
    if (held_top == lock) {
        held_top = lock->below;
    } else {
        // Released out of order: bypass it in the chain of whoever it was below.
        for (pmll_abi_lock_t *l = held_top; l; l = l->below) {
            if (l->below == lock) { l->below = lock->below; break; }
        }
    }
    lock->below = NULL;
}

#define PMLL_STR2(x) #x
#define PMLL_STR(x) PMLL_STR2(x)
const char *pmll_get_version(void) {
    return PMLL_STR(PMLL_VERSION_MAJOR) "." PMLL_STR(PMLL_VERSION_MINOR) "." PMLL_STR(PMLL_VERSION_PATCH);
}

// An operation's failure, reported from inside it on the queue's thread (see pmll_operation_fail).
static _Thread_local char *operation_failure;

void pmll_operation_fail(const char *reason) {
    free(operation_failure);
    operation_failure = strdup(reason ? reason : "operation failed");
}

char *pmll_abi_take_failure(void) {
    char *reason = operation_failure;
    operation_failure = NULL;
    return reason;
}
