#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int pmll_open_unnamed(int dirfd, unsigned mode) {
    int fd = openat(dirfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, (mode_t)mode);
    return fd >= 0 ? fd : -errno;
}

int pmll_unnamed_unsupported(int err) {
    // EISDIR: a kernel older than 3.11 saw O_DIRECTORY only; EOPNOTSUPP: the filesystem.
    return err == EOPNOTSUPP || err == EISDIR || err == EINVAL;
}

int pmll_link_unnamed(int fd, int dirfd, const char *name) {
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, path, dirfd, name, AT_SYMLINK_FOLLOW) == 0 ? 0 : -errno;
}

int pmll_open_path(int dirfd, const char *name) {
    int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

int pmll_syncfs(int fd) {
    return syncfs(fd) == 0 ? 0 : -errno;
}

int pmll_rename_exchange(int dirfd, const char *a, const char *b) {
    return renameat2(dirfd, a, dirfd, b, RENAME_EXCHANGE) == 0 ? 0 : -errno;
}

int pmll_exchange_unsupported(int err) {
    // EINVAL: the filesystem has no RENAME_EXCHANGE; ENOSYS: a kernel without renameat2.
    return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP;
}
