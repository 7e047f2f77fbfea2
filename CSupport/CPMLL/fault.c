#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

// A fixed table read by the signal handler: slots are claimed with a CAS on `base`, and the
// handler reads only through atomics and async-signal-safe calls.
#define PMLL_FAULT_REGIONS 16
static struct {
    const void *base;
    uint64_t length;
    char path[1024];
} regions[PMLL_FAULT_REGIONS];

static void put(const char *s) { (void)!write(2, s, strlen(s)); }

static void put_number(uint64_t v) {
    char buf[24];
    int i = sizeof buf;
    buf[--i] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v && i > 0);
    put(buf + i);
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < PMLL_FAULT_REGIONS; i++) {
        uintptr_t base = (uintptr_t)__atomic_load_n(&regions[i].base, __ATOMIC_ACQUIRE);
        if (base == 0 || address < base || address - base >= __atomic_load_n(&regions[i].length, __ATOMIC_RELAXED)) continue;
        put("pmll: pool '");
        put(regions[i].path);
        put("' lost its storage while in use (its file was truncated or the file system failed to provide a page; SIGBUS at offset ");
        put_number((uint64_t)(address - base));
        put(")\n");
        _exit(65);
    }
    // Not ours: the default action (core dump and death by SIGBUS), as if no handler existed.
    signal(sig, SIG_DFL);
    raise(sig);
}

int pmll_fault_guard_install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGBUS, &action, NULL) == 0 ? 0 : -errno;
}

void pmll_fault_guard_register(const void *base, uint64_t length, const char *path) {
    for (int i = 0; i < PMLL_FAULT_REGIONS; i++) {
        const void *empty = NULL;
        if (__atomic_load_n(&regions[i].base, __ATOMIC_RELAXED) != NULL) continue;
        // Claim with a sentinel so the handler never sees a half-written path.
        if (!__atomic_compare_exchange_n(&regions[i].base, &empty, (const void *)1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) continue;
        __atomic_store_n(&regions[i].length, 0, __ATOMIC_RELAXED);
        strncpy(regions[i].path, path, sizeof regions[i].path - 1);
        regions[i].path[sizeof regions[i].path - 1] = 0;
        __atomic_store_n(&regions[i].length, length, __ATOMIC_RELAXED);
        __atomic_store_n(&regions[i].base, base, __ATOMIC_RELEASE);
        return;
    }
    // More pools than slots: those faults keep the default action.
}

void pmll_fault_guard_unregister(const void *base) {
    for (int i = 0; i < PMLL_FAULT_REGIONS; i++) {
        const void *expected = base;
        if (__atomic_compare_exchange_n(&regions[i].base, &expected, NULL, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            __atomic_store_n(&regions[i].length, 0, __ATOMIC_RELAXED);
            return;
        }
    }
}
