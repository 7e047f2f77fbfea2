#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
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

int pmll_ext4_without_journal(int fd) {
    struct statfs fs;
    struct stat st;
    if (fstatfs(fd, &fs) != 0 || fs.f_type != 0xEF53 || fstat(fd, &st) != 0) return 0;
    // /sys/fs/ext4/<device>/journal_task names the jbd2 thread, or "<none>".
    char link[64], target[256], attribute[320], task[32] = {0};
    snprintf(link, sizeof link, "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len <= 0) return 0;
    target[len] = 0;
    const char *slash = strrchr(target, '/');
    snprintf(attribute, sizeof attribute, "/sys/fs/ext4/%s/journal_task", slash ? slash + 1 : target);
    int afd = open(attribute, O_RDONLY | O_CLOEXEC);
    if (afd < 0) return 0;
    ssize_t got = read(afd, task, sizeof task - 1);
    close(afd);
    return got > 0 && strncmp(task, "<none>", 6) == 0;
}
