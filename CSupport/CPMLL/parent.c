#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

int pmll_pidfd_open(int32_t pid) {
    long fd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
    return fd >= 0 ? (int)fd : -errno;
}

static void *pmll_parent_watch(void *arg) {
    int fd = (int)(intptr_t)arg;
    if (fd >= 0) {
        // A pidfd becomes readable when the process exits.
        struct pollfd p = { .fd = fd, .events = POLLIN };
        while (poll(&p, 1, -1) < 0 && errno == EINTR) {}
    } else {
        pid_t parent = getppid();
        while (getppid() == parent) usleep(100000);
    }
    kill(getpid(), SIGKILL);
    return NULL;
}

int pmll_die_with_parent(int32_t expected_parent) {
    int fd = pmll_pidfd_open(expected_parent);
    // Checked after the open: if the parent is still ours now, the pidfd is its (a pid is
    // only reused once its process is gone, and then getppid() no longer returns it).
    if (getppid() != (pid_t)expected_parent) kill(getpid(), SIGKILL);
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, pmll_parent_watch, (void *)(intptr_t)fd);
    if (rc != 0) {
        if (fd >= 0) close(fd);
        return -rc;
    }
    pthread_detach(thread);
    return 0;
}
