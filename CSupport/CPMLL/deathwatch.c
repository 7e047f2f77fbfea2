#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Waiting on a lock word *or* the exit of its owner (see Docs/LockProtocol.md, "Takeover"):
// one io_uring per waiting thread, with an IORING_OP_FUTEX_WAIT on the word (opcode 51,
// kernel 6.7+; liburing 2.3 has no helper for it) and an IORING_OP_POLL_ADD on a pidfd of the
// owner. Whichever completes first ends the wait; the other is cancelled and reaped so the
// ring is empty again.

#define OP_FUTEX_WAIT 51
#define FUTEX2_U32 0x02
enum { UD_FUTEX = 1, UD_POLL = 2, UD_CANCEL = 3 };

static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static int unsupported;   // set once the kernel refused the ring or the opcode
static __thread struct io_uring *thread_ring;

static void ring_free(void *p) {
    struct io_uring *r = p;
    io_uring_queue_exit(r);
    free(r);
}
static void ring_key_init(void) { (void)pthread_key_create(&ring_key, ring_free); }

static struct io_uring *ring_get(void) {
    if (thread_ring) return thread_ring;
    pthread_once(&ring_once, ring_key_init);
    struct io_uring *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    if (io_uring_queue_init(4, r, 0) < 0) {
        free(r);
        __atomic_store_n(&unsupported, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    thread_ring = r;
    (void)pthread_setspecific(ring_key, r);
    return r;
}

int pmll_owner_watch_supported(void) { return !__atomic_load_n(&unsupported, __ATOMIC_RELAXED); }

// The text of a /proc/.../stat file into buf (NUL-terminated): 0, or -1.
static int read_stat(const char *path, char buf[static 1024]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, 1023);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    return 0;
}

// Fields 3 (state), 9 (flags) and 22 (start time) of a /proc/.../stat file. 0, or -1.
static int stat_fields(const char *path, char *state, unsigned long long *flags, unsigned long long *start) {
    char buf[1024];
    return read_stat(path, buf) == 0 ? pmll_proc_stat_parse(buf, state, flags, start) : -1;
}

int pmll_pidfd_open_checked(int32_t pid, uint64_t start_time) {
    if (pid <= 0) return -ESRCH;
    int fd = pmll_pidfd_open(pid);
    if (fd < 0) return fd;
    // pidfd_open races with PID reuse: the pid must still be the registered process, which
    // its start time (field 22 of /proc/PID/stat) tells.
    char path[64], state;
    unsigned long long flags = 0, start = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (stat_fields(path, &state, &flags, &start) != 0 || start != start_time) {
        close(fd);
        return -ESRCH;
    }
    return fd;
}

int pmll_process_stopped(int32_t pid, uint64_t start_time) {
    if (pid <= 0) return 0;
    char path[64], state = 0;
    unsigned long long flags = 0, start = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (stat_fields(path, &state, &flags, &start) != 0 || (start_time != 0 && start != start_time)) return 0;
    return state == 'T' || state == 't';
}

void pmll_fd_close(int fd) { if (fd >= 0) close(fd); }

int pmll_wait_word_or_exit(uint32_t *word, uint32_t expected, int64_t deadline_ns, int pidfd) {
    if (!pmll_owner_watch_supported()) return -ENOSYS;
    struct io_uring *r = ring_get();
    if (!r) return -ENOSYS;
    struct io_uring_sqe *a = io_uring_get_sqe(r), *b = io_uring_get_sqe(r);
    if (!a || !b) return -ENOSYS;
    io_uring_prep_rw(OP_FUTEX_WAIT, a, FUTEX2_U32, word, 0, expected);
    a->addr3 = FUTEX_BITSET_MATCH_ANY;
    a->user_data = UD_FUTEX;
    io_uring_prep_poll_add(b, pidfd, POLLIN);
    b->user_data = UD_POLL;

    struct __kernel_timespec ts, *tsp = NULL;
    if (deadline_ns != INT64_MAX) {
        int64_t left = deadline_ns - pmll_clock_monotonic_ns();
        if (left < 0) left = 0;
        ts.tv_sec = left / 1000000000;
        ts.tv_nsec = left % 1000000000;
        tsp = &ts;
    }
    int rc = io_uring_submit(r);
    if (rc < 0) return -ENOSYS;
    struct io_uring_cqe *cqe = NULL;
    do rc = io_uring_wait_cqe_timeout(r, &cqe, tsp); while (rc == -EINTR);
    int futex_res = 1, poll_res = 0, timed_out = rc == -ETIME;
    unsigned pending = (1u << UD_FUTEX) | (1u << UD_POLL);
    if (rc == 0) {
        unsigned ud = (unsigned)cqe->user_data;
        if (ud == UD_FUTEX) futex_res = cqe->res; else poll_res = cqe->res;
        pending &= ~(1u << ud);
        io_uring_cqe_seen(r, cqe);
    }
    // Cancel what is still in flight, then reap it and the cancellations.
    for (unsigned ud = UD_FUTEX; ud <= UD_POLL; ud++) {
        if (!(pending & (1u << ud))) continue;
        struct io_uring_sqe *c = io_uring_get_sqe(r);
        if (!c) break;
        io_uring_prep_cancel64(c, ud, 0);
        c->user_data = UD_CANCEL + ud * 8;   // distinct, never 1 or 2
    }
    io_uring_submit(r);
    int fr = futex_res, pr = poll_res;
    // Each cancel produces its own completion: count them as pending too.
    unsigned cancels = __builtin_popcount(pending);
    while (pending || cancels) {
        struct io_uring_cqe *c;
        int w;
        do w = io_uring_wait_cqe(r, &c); while (w == -EINTR);
        if (w < 0) break;
        unsigned ud = (unsigned)c->user_data;
        if (ud == UD_FUTEX || ud == UD_POLL) {
            if (ud == UD_FUTEX && c->res != -ECANCELED) fr = c->res;
            if (ud == UD_POLL && c->res != -ECANCELED) pr = c->res;
            pending &= ~(1u << ud);
        } else if (cancels) {
            cancels--;
        }
        io_uring_cqe_seen(r, c);
    }
    if (fr == -EINVAL || fr == -EOPNOTSUPP || pr == -EINVAL) {
        // No IORING_OP_FUTEX_WAIT here (kernel before 6.7): never try again.
        __atomic_store_n(&unsupported, 1, __ATOMIC_RELAXED);
        return -ENOSYS;
    }
    if (pr > 0 && (pr & POLLIN)) return 1;
    if (fr == 0 || fr == -EAGAIN) return 0;
    return timed_out ? -ETIMEDOUT : 0;
}

// MARK: - Exit word: an event at the *start* of the owner's exit

// One thread per process whose robust-futex list (set_robust_list is per thread) links the exit
// word of every pool slot this process holds. It never runs user code after it starts: it only
// sleeps. When the process dies the kernel walks that list as the thread begins to exit, before
// tearing the address space down, marks each word FUTEX_OWNER_DIED and wakes a waiter. The
// word is only an event: a waiter then checks that *every* thread of the owner has begun to
// exit (pmll_exit_check_run, exitcheck.c) before it takes over, so no code of the owner can
// run after.

#include <signal.h>
#include <stddef.h>

static struct robust_list_head exit_head = { .list = { .next = &exit_head.list } };
static pthread_mutex_t exit_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t exit_tid;   // the thread's, once it runs with its list registered; 0 before

static uint32_t *exit_word_of(struct robust_list *node) {
    return (uint32_t *)(void *)((char *)node + exit_head.futex_offset);
}

static void *exit_watch_main(void *arg) {
    (void)arg;
    long rc = syscall(SYS_set_robust_list, &exit_head, sizeof exit_head);
    if (rc == 0) {
        pthread_mutex_lock(&exit_lock);
        exit_tid = (pid_t)syscall(SYS_gettid);
        // Slots attached before this thread ran get their word now; until then their waiters
        // used the pidfd or the OFD byte, as for an owner without a watch.
        for (struct robust_list *p = exit_head.list.next; p != &exit_head.list; p = p->next)
            __atomic_store_n(exit_word_of(p), (uint32_t)exit_tid, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&exit_lock);
        // Pinned where it starts: a waiter reads that CPU from /proc and sleeps on another, so
        // that when this thread's exit wakes it (and this thread, the last of its process to
        // exit, then tears the process down here) it is not queued behind that teardown.
        int cpu = sched_getcpu();
        if (cpu >= 0 && cpu < CPU_SETSIZE) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            (void)sched_setaffinity(0, sizeof one, &one);
        }
    }
    uint32_t never = 0;
    for (;;) syscall(SYS_futex, &never, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    return NULL;
}

static int exit_create_rc;

static void exit_watch_create(void) {
    // Our own list, not glibc's: this thread never takes a robust pthread mutex.
    exit_head.futex_offset = (long)offsetof(pmll_process_slot_t, exit_word) - (long)offsetof(pmll_process_slot_t, robust_next);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    // Every signal blocked (the mask is inherited): the thread never runs a handler.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    exit_create_rc = pthread_create(&t, &attr, exit_watch_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

// Not waiting for the thread to run (that wait was a context switch, about 2 % of a `pmll
// lock` process): a slot attached before it runs gets its word from the thread itself.
int pmll_exit_watch_attach(pmll_process_slot_t *slot) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, exit_watch_create);
    if (exit_create_rc != 0) return -exit_create_rc;
    pthread_mutex_lock(&exit_lock);
    struct robust_list *node = (struct robust_list *)(void *)&slot->robust_next;
    __atomic_store_n(&slot->exit_word, (uint32_t)exit_tid, __ATOMIC_RELEASE);
    // Linked at the head; list_op_pending covers a death between the two stores.
    exit_head.list_op_pending = node;
    node->next = exit_head.list.next;
    __atomic_store_n(&exit_head.list.next, node, __ATOMIC_RELEASE);
    exit_head.list_op_pending = NULL;
    pthread_mutex_unlock(&exit_lock);
    return 0;
}

void pmll_exit_watch_detach(pmll_process_slot_t *slot) {
    pthread_mutex_lock(&exit_lock);
    struct robust_list *node = (struct robust_list *)(void *)&slot->robust_next;
    for (struct robust_list *p = &exit_head.list; p->next != &exit_head.list; p = p->next) {
        if (p->next == node) {
            __atomic_store_n(&p->next, node->next, __ATOMIC_RELEASE);
            break;
        }
    }
    __atomic_store_n(&slot->exit_word, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&exit_lock);
}

int pmll_wait_word_or_exit_word(uint32_t *word, uint32_t expected, uint32_t *exit_word, uint32_t exit_expected, int64_t deadline_ns) {
    pmll_futex_waiter_t w[2] = {
        { .word = word, .expected = expected, .process_private = 0 },
        { .word = exit_word, .expected = exit_expected, .process_private = 0 },
    };
    int rc = pmll_futex_waitv(w, 2, deadline_ns);
    if (rc >= 0 || rc == -EAGAIN || rc == -EINTR) return 0;
    return rc;
}

int pmll_thread_cpu(int32_t pid, int32_t tid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
    return read_stat(path, buf) == 0 ? pmll_proc_stat_processor(buf) : -1;
}

void pmll_thread_step_off(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getcpu() != cpu) return;
    cpu_set_t mask, others;
    if (sched_getaffinity(0, sizeof mask, &mask) != 0) return;
    others = mask;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) == 0) return;
    // Moved now (the call returns once the thread runs elsewhere); the mask is as before after.
    if (sched_setaffinity(0, sizeof others, &others) == 0) (void)sched_setaffinity(0, sizeof mask, &mask);
}
