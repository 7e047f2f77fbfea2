// How durable flushes scale from one process to four on a file system, with no PMLL in it:
// each "commit" changes a byte of its own page of a shared file mapping and makes BARRIERS
// barriers, either an msync of that page (each process its own) or a shared fdatasync made by
// a leader for everyone who arrived meanwhile (group commit, the queue's GroupCommit protocol).
// The ceiling for issue 19's "4 processes / 1 on disk" (Docs/Benchmarks.md "Flush scaling").
// Usage: flush-scaling PROCESSES GROUP(0|1) BARRIERS FILE [SECONDS]
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/wait.h>
#include <linux/futex.h>
#include <sys/syscall.h>
struct shared { uint64_t requested, started, completed; uint32_t word; uint64_t commits[8]; };
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void group_barrier(struct shared *s, int fd) {
    uint64_t mine = __atomic_add_fetch(&s->requested, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        uint32_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->completed, __ATOMIC_ACQUIRE) >= mine) return;
        uint64_t started = __atomic_load_n(&s->started, __ATOMIC_ACQUIRE);
        if (started >= mine) { syscall(SYS_futex, &s->word, FUTEX_WAIT, w, NULL, NULL, 0); continue; }
        uint64_t upto = __atomic_load_n(&s->requested, __ATOMIC_ACQUIRE);
        uint64_t cur = started;
        while (cur < upto && !__atomic_compare_exchange_n(&s->started, &cur, upto, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
        fdatasync(fd);
        cur = __atomic_load_n(&s->completed, __ATOMIC_ACQUIRE);
        while (cur < upto && !__atomic_compare_exchange_n(&s->completed, &cur, upto, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
        __atomic_add_fetch(&s->word, 1, __ATOMIC_RELEASE);
        syscall(SYS_futex, &s->word, FUTEX_WAKE, 64, NULL, NULL, 0);
        return;
    }
}
int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: %s PROCESSES GROUP(0|1) BARRIERS FILE [SECONDS]\n", argv[0]); return 64; }
    int n = atoi(argv[1]), group = atoi(argv[2]), barriers = atoi(argv[3]);
    double secs = argc > 5 ? atof(argv[5]) : 2;
    if (n < 1 || n > 8 || barriers < 1 || barriers > 4) { fprintf(stderr, "1-8 processes, 1-4 barriers\n"); return 64; }
    int fd = open(argv[4], O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, 16 << 20) != 0) { perror(argv[4]); return 66; }
    char *m = mmap(NULL, 16 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    madvise(m, 16 << 20, MADV_RANDOM);
    struct shared *s = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    for (int p = 0; p < n; p++) if (fork() == 0) {
        double end = now() + secs; uint64_t c = 0;
        while (now() < end) {
            for (int b = 0; b < barriers; b++) {   // e.g. two per commit: log page, data page
                char *page = m + (size_t)(p * 64 + b * 16 + (c % 16)) * 4096;
                page[0]++;
                if (group) group_barrier(s, fd); else msync(page, 4096, MS_SYNC);
            }
            c++;
        }
        s->commits[p] = c; _exit(0);
    }
    while (wait(NULL) > 0) {}
    uint64_t total = 0; for (int p = 0; p < n; p++) total += s->commits[p];
    printf("%.0f\n", total / secs);
}
