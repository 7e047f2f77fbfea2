// pmll-bench-holder FILE: a small process (one thread; libc, and the Swift runtime SwiftPM links
// into every executable, unused) that takes the glibc robust
// mutex at the start of FILE (made by pmll-bench), prints "held" and sleeps until killed. The
// takeover benchmark kills it to time glibc's takeover after a small holder, beside `pmll lock`
// as PMLL's small holder: how long a killed process takes to exit grows with its size and
// threads, and sets the tail of any takeover that must wait for it.
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: pmll-bench-holder FILE\n");
        return 64;
    }
    int fd = open(argv[1], O_RDWR | O_CLOEXEC);
    if (fd < 0) { perror(argv[1]); return 66; }
    void *base = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 71; }
    // The mutex pmll-bench made (CPMLLPeers' peers_robust_init: pshared, robust).
    pthread_mutex_t *mutex = base;
    int rc = pthread_mutex_lock(mutex);
    if (rc == EOWNERDEAD) rc = pthread_mutex_consistent(mutex);
    if (rc != 0) { fprintf(stderr, "pmll-bench-holder: lock failed: %d\n", rc); return 71; }
    printf("held\n");
    fflush(stdout);
    for (;;) pause();
}
