#define _GNU_SOURCE
#include "cpmll.h"
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Whether every thread of a dying owner is past the point of no return (Docs/LockProtocol.md,
// "Takeover at the kernel's pace"), read from /proc through descriptors opened while the owner
// still lived. At the owner's death the check is then a few reads and no path lookup: opening
// the files at that moment cost 160-220 us of a 0.6 ms takeover (cold /proc dentries, on a CPU
// the dying process competes for), reading them costs a few microseconds each.

int pmll_proc_stat_parse(const char *buf, char *state, unsigned long long *flags, unsigned long long *start) {
    const char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return -1;
    *state = p[2];
    int field = 3;
    for (const char *q = p + 2; q && field <= 22; field++) {
        if (field == 9) *flags = strtoull(q, NULL, 10);
        if (field == 22) *start = strtoull(q, NULL, 10);
        q = strchr(q, ' ');
        if (q) q++;
    }
    return field > 22 ? 0 : -1;
}

// The text of numeric field `field` (4 or later), or NULL.
static const char *stat_field(const char *buf, int field) {
    const char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return NULL;
    p += 2;   // field 3
    for (int at = 3; at < field; at++) {
        p = strchr(p, ' ');
        if (!p) return NULL;
        p++;
    }
    return p;
}

int pmll_proc_stat_processor(const char *buf) {
    const char *p = stat_field(buf, 39);
    return p ? (int)strtol(p, NULL, 10) : -1;
}

int pmll_proc_stat_sigkill(const char *buf) {
    const char *p = stat_field(buf, 31);
    if (!p || *p < '0' || *p > '9') return -1;
    return (strtoull(p, NULL, 10) & (1ull << (SIGKILL - 1))) ? 1 : 0;
}

// flags (field 9) has PF_EXITING once a thread entered do_exit; it never returns to user
// space after that.
#define PF_EXITING_FLAG 0x00000004u
// Descriptors are kept for this many threads of the owner (others are opened at each check):
// every sleeping waiter thread holds its watch's descriptors, and they count against the
// descriptor limit of the application that links us.
#define KEPT_DESCRIPTORS 8
#define MAX_THREADS 4096

struct thread_entry { pid_t tid; int stat; int status; unsigned seen; };

struct pmll_exit_check {
    int task;   // /proc/PID/task: bound to that process (a reused PID is another struct pid)
    pid_t exit_tid;   // the owner's exit-watch thread, if it was one of its threads at open; else 0
    int exit_fired;   // during a run: the caller saw that thread's exit word fire
    int count, capacity;
    unsigned run;
    struct thread_entry *threads;
    int pinned;   // during a run: the CPU this thread is pinned to (-1 not yet, -2 could not)
    int unpin;    // the run pinned it (a caller that pinned it already keeps its pin)
};

// Reads a whole small /proc file from offset 0 (seq_file regenerates it at each read).
static ssize_t read_at_start(int fd, char *buf, size_t size) {
    ssize_t n;
    do { n = pread(fd, buf, size - 1, 0); } while (n < 0 && errno == EINTR);
    if (n >= 0) buf[n] = 0;
    return n;
}

// 1 gone, 0 read (state, flags, and whether SIGKILL is in the thread's own pending set).
static int thread_stat(int fd, char *state, unsigned long long *flags, int *killed) {
    char buf[1024];
    unsigned long long start = 0;
    if (read_at_start(fd, buf, sizeof buf) <= 0) return 1;   // ESRCH: the thread was reaped
    if (pmll_proc_stat_parse(buf, state, flags, &start) != 0) return 1;
    *killed = pmll_proc_stat_sigkill(buf) == 1;
    return 0;
}

static int sigkill_pending(int fd) {
    char buf[4096];
    if (read_at_start(fd, buf, sizeof buf) <= 0) return 1;   // gone
    const char *keys[2] = {"\nSigPnd:", "\nShdPnd:"};
    for (int i = 0; i < 2; i++) {
        const char *p = strstr(buf, keys[i]);
        if (p && (strtoull(p + 8, NULL, 16) & (1ull << (SIGKILL - 1)))) return 1;
    }
    return 0;
}

// Asleep or stopped in the kernel (not R): such a thread gets back to user space only through
// the kernel's signal check, which turns a pending SIGKILL into its exit.
static int blocked_state(char state) { return state == 'S' || state == 'D' || state == 'T' || state == 't' || state == 'I'; }

static int open_in(int dir, pid_t tid, const char *file) {
    char path[48];
    snprintf(path, sizeof path, "%d/%s", tid, file);
    return openat(dir, path, O_RDONLY | O_CLOEXEC);
}

// The calling thread's mask before pmll_thread_pin_here, while pinned.
static __thread cpu_set_t pin_saved;
static __thread int pin_cpu = -1;

int pmll_thread_pin_here(void) {
    if (pin_cpu >= 0) return pin_cpu;
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof pin_saved, &pin_saved) != 0) return -1;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    // Returns once this thread runs there (the kernel migrates it first if needed).
    if (sched_setaffinity(0, sizeof one, &one) != 0) return -1;
    pin_cpu = cpu;
    return cpu;
}

void pmll_thread_unpin(void) {
    if (pin_cpu < 0) return;
    (void)sched_setaffinity(0, sizeof pin_saved, &pin_saved);
    pin_cpu = -1;
}

// Pins the calling thread once per run: the CPU, or -1.
static int pin_here(struct pmll_exit_check *c) {
    if (c->pinned == -1) {
        int already = pin_cpu >= 0;
        int cpu = pmll_thread_pin_here();
        c->pinned = cpu >= 0 ? cpu : -2;
        c->unpin = cpu >= 0 && !already;
    }
    return c->pinned >= 0 ? c->pinned : -1;
}

// 1 if no thread has this TID now, else 0 with its state and flags. A kept descriptor whose
// thread is gone is opened again by TID: the TID may name a newer thread of the owner.
static int read_thread(struct pmll_exit_check *c, pid_t tid, int *stat, int *status, char *state, unsigned long long *flags, int *killed) {
    if (*stat >= 0 && !thread_stat(*stat, state, flags, killed)) return 0;
    if (*stat >= 0) close(*stat);
    if (*status >= 0) close(*status);
    *status = -1;
    *stat = open_in(c->task, tid, "stat");
    return *stat < 0 || thread_stat(*stat, state, flags, killed);
}

// The thread can run no more user code: it has begun to exit or is gone; or SIGKILL was
// pending and *afterwards* (the second read) it was seen blocked in the kernel.
static int thread_cannot_run(struct pmll_exit_check *c, pid_t tid, int *stat, int *status) {
    char state;
    unsigned long long flags = 0;
    int killed = 0;
    if (read_thread(c, tid, stat, status, &state, &flags, &killed)) return 1;
    if ((flags & PF_EXITING_FLAG) || state == 'Z' || state == 'X') return 1;
    // SIGKILL pending: in the thread's own set (in the stat just read; a SIGKILL sent to the
    // process is put there for every thread), or else in the process's shared set (status, a
    // file opened only then: opening and reading it cost about 55 µs of a takeover, measured).
    if (!killed) {
        if (*status < 0) *status = open_in(c->task, tid, "status");
        if (*status < 0 || !sigkill_pending(*status)) return 0;
    }
    int before = *stat;
    if (read_thread(c, tid, stat, status, &state, &flags, &killed)) return 1;
    if (*stat != before) return 0;   // another thread by now: look again at the next check
    if ((flags & PF_EXITING_FLAG) || state == 'Z' || state == 'X' || blocked_state(state)) return 1;
    // Runnable (R) is either running (maybe in user space on another CPU, its SIGKILL not yet
    // taken) or waiting for a CPU; only the first can run user code before its signal check.
    // Pinned to our CPU, a stat saying the thread is on this CPU was read while we, not it,
    // ran here: it was not running, and from a run queue it reaches user space only through
    // the signal check. This is the common case on a busy machine: the woken waiter and the
    // killed owner's last threads queue on the same CPU, and without it the waiter would give
    // the CPU up and wait for the owner's whole teardown (Docs/LockProtocol.md).
    int cpu = pin_here(c);
    if (cpu < 0 || state != 'R') return 0;
    char buf[1024];
    if (*stat < 0 || read_at_start(*stat, buf, sizeof buf) <= 0) return 1;   // reaped meanwhile
    unsigned long long start = 0;
    if (pmll_proc_stat_parse(buf, &state, &flags, &start) != 0) return 0;
    return (flags & PF_EXITING_FLAG) || state == 'Z' || state == 'X' || blocked_state(state) || pmll_proc_stat_processor(buf) == cpu;
}

// Calls `each(tid)` for every thread listed now; -1 if the list cannot be read, -2 if `each`
// stopped it, else how many threads `each` reported new.
static int list_threads(struct pmll_exit_check *c, int (*each)(struct pmll_exit_check *, pid_t)) {
    char buf[4096];
    if (lseek(c->task, 0, SEEK_SET) < 0) return -1;
    int added = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, c->task, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == ENOENT || errno == ESRCH ? 0 : -1;   // reaped: no thread left
        if (n == 0) return added;
        for (long off = 0; off < n;) {
            struct dirent64 *e = (struct dirent64 *)(void *)(buf + off);
            off += e->d_reclen;
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            int rc = each(c, (pid_t)atoi(e->d_name));
            if (rc < 0) return -2;
            added += rc;
        }
    }
}

static struct thread_entry *find_or_add(struct pmll_exit_check *c, pid_t tid) {
    for (int i = 0; i < c->count; i++) if (c->threads[i].tid == tid) return &c->threads[i];
    if (c->count == c->capacity) {
        int capacity = c->capacity ? c->capacity * 2 : 8;
        if (capacity > MAX_THREADS) return NULL;
        struct thread_entry *grown = realloc(c->threads, (size_t)capacity * sizeof *grown);
        if (!grown) return NULL;
        c->threads = grown;
        c->capacity = capacity;
    }
    struct thread_entry *t = &c->threads[c->count];
    t->tid = tid;
    t->stat = c->count < KEPT_DESCRIPTORS ? open_in(c->task, tid, "stat") : -1;
    t->status = -1;
    t->seen = 0;
    c->count++;
    return t;
}

static int cache_thread(struct pmll_exit_check *c, pid_t tid) { return find_or_add(c, tid) ? 0 : -1; }

// 1 if the thread is new to this run and cannot run, 0 if seen already, -1 if it can run (or
// cannot be told).
static int check_thread(struct pmll_exit_check *c, pid_t tid) {
    struct thread_entry *t = find_or_add(c, tid);
    if (!t) return -1;
    if (t->seen == c->run) return 0;
    // The kernel marks the exit word from this thread's robust list in its do_exit, after
    // PF_EXITING: nothing to read.
    if (c->exit_fired && tid == c->exit_tid) {
        t->seen = c->run;
        return 1;
    }
    int kept = (int)(t - c->threads) < KEPT_DESCRIPTORS;
    int stat = t->stat, status = t->status;
    int ok = thread_cannot_run(c, tid, &stat, &status);
    if (kept) {
        t->stat = stat;
        t->status = status;
    } else {
        if (stat >= 0) close(stat);
        if (status >= 0) close(status);
    }
    if (!ok) return -1;
    t->seen = c->run;
    return 1;
}

pmll_exit_check_t *pmll_exit_check_open(int32_t pid, uint64_t start_time, int32_t exit_tid) {
    char path[32], buf[1024], state;
    unsigned long long flags = 0, start = 0;
    snprintf(path, sizeof path, "/proc/%d", pid);
    int dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return NULL;
    // The PID must still name the registered process; from here `dir` keeps naming it.
    int stat = openat(dir, "stat", O_RDONLY | O_CLOEXEC);
    int ok = stat >= 0 && read_at_start(stat, buf, sizeof buf) > 0 && pmll_proc_stat_parse(buf, &state, &flags, &start) == 0 && start == start_time;
    if (stat >= 0) close(stat);
    int task = ok ? openat(dir, "task", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    close(dir);
    struct pmll_exit_check *c = task >= 0 ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        if (task >= 0) close(task);
        return NULL;
    }
    c->task = task;
    (void)list_threads(c, cache_thread);
    // Kept only if it is one of this process's threads now: then its exit word fires only
    // from this process's exit (a TID names one thread at a time).
    for (int i = 0; exit_tid > 0 && i < c->count; i++)
        if (c->threads[i].tid == exit_tid) c->exit_tid = exit_tid;
    return c;
}

static int run_rounds(struct pmll_exit_check *c) {
    // Every thread listed must be past the point of no return; list again until no new thread
    // appears (a thread that was running when listed may have created one before it began to
    // exit). Not when the exit-watch thread's word fired before the first listing: that
    // thread, which blocks every signal and never returns, exits only in its process's group
    // exit (SIGKILL, exit_group, a fatal signal), which under the signal lock puts SIGKILL in
    // every thread's pending set and makes every later clone of the process fail; so the
    // first listing already holds every thread there will be. (Or in an exec, whose thread
    // is listed and can run: the check then says so.)
    for (int round = 0; round < 8; round++) {
        int added = list_threads(c, check_thread);
        if (added == -2) return 0;
        if (added < 0) return -1;
        if (added == 0 || (c->exit_fired && c->exit_tid)) return 1;
    }
    return -1;
}

int pmll_exit_check_run(pmll_exit_check_t *c, int exit_fired) {
    c->run++;
    c->exit_fired = exit_fired;
    c->pinned = -1;
    c->unpin = 0;
    int rc = run_rounds(c);
    if (c->unpin) pmll_thread_unpin();
    return rc;
}

void pmll_exit_check_close(pmll_exit_check_t *c) {
    if (!c) return;
    for (int i = 0; i < c->count; i++) {
        if (c->threads[i].stat >= 0) close(c->threads[i].stat);
        if (c->threads[i].status >= 0) close(c->threads[i].status);
    }
    free(c->threads);
    close(c->task);
    free(c);
}

// Ended watches: closing the /proc descriptors of an owner that just died took 40-50 us
// between a takeover and the critical section (measured); the next waiter to start a watch
// closes them instead, while it waits anyway. Kept in C: the same list in Swift cost as much
// again on its first use in a process (generic metadata made at that moment).
#define ENDED_LIMIT 2
static struct { pmll_exit_check_t *check; int pidfd; } ended[ENDED_LIMIT];
static int ended_count;
static pthread_mutex_t ended_lock = PTHREAD_MUTEX_INITIALIZER;

void pmll_exit_check_end(pmll_exit_check_t *c, int pidfd) {
    if (!c && pidfd < 0) return;
    pmll_exit_check_t *old_check = NULL;
    int old_pidfd = -1;
    pthread_mutex_lock(&ended_lock);
    if (ended_count == ENDED_LIMIT) {
        old_check = ended[0].check;
        old_pidfd = ended[0].pidfd;
        memmove(&ended[0], &ended[1], (ENDED_LIMIT - 1) * sizeof ended[0]);
        ended_count--;
    }
    ended[ended_count].check = c;
    ended[ended_count].pidfd = pidfd;
    ended_count++;
    pthread_mutex_unlock(&ended_lock);
    pmll_exit_check_close(old_check);
    if (old_pidfd >= 0) close(old_pidfd);
}

void pmll_exit_check_close_ended(void) {
    pmll_exit_check_t *checks[ENDED_LIMIT];
    int pidfds[ENDED_LIMIT], n;
    pthread_mutex_lock(&ended_lock);
    n = ended_count;
    for (int i = 0; i < n; i++) {
        checks[i] = ended[i].check;
        pidfds[i] = ended[i].pidfd;
    }
    ended_count = 0;
    pthread_mutex_unlock(&ended_lock);
    for (int i = 0; i < n; i++) {
        pmll_exit_check_close(checks[i]);
        if (pidfds[i] >= 0) close(pidfds[i]);
    }
}
