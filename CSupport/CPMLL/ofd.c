#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

static void fill(struct flock *fl, int64_t offset, int kind) {
    memset(fl, 0, sizeof *fl);
    fl->l_type = kind == PMLL_RANGE_EXCLUSIVE ? F_WRLCK : kind == PMLL_RANGE_SHARED ? F_RDLCK : F_UNLCK;
    fl->l_whence = SEEK_SET;
    fl->l_start = (off_t)offset;
    fl->l_len = 1;
    fl->l_pid = 0;   // required to be 0 for OFD locks
}

int pmll_ofd_lock(int fd, int64_t offset, int kind, int wait) {
    struct flock fl;
    fill(&fl, offset, kind);
    if (fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl) == 0) return 0;
    int e = errno;
    return -(e == EACCES ? EAGAIN : e);   // POSIX allows either for "held by someone else"
}

int pmll_ofd_probe(int fd, int64_t offset, int kind) {
    struct flock fl;
    fill(&fl, offset, kind);
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return -errno;
    return fl.l_type == F_UNLCK ? 0 : 1;
}

int pmll_rename_noreplace(const char *oldpath, const char *newpath) {
    return renameat2(AT_FDCWD, oldpath, AT_FDCWD, newpath, RENAME_NOREPLACE) == 0 ? 0 : -errno;
}
