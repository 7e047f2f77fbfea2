#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pmll_uring {
    struct io_uring ring;
    unsigned files;
};

int pmll_uring_create(unsigned entries, unsigned files, pmll_uring_t **out) {
    pmll_uring_t *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    int rc = io_uring_queue_init(entries, &r->ring, 0);   // liburing returns -errno, never sets errno
    if (rc < 0) { free(r); return rc; }
    rc = io_uring_register_files_sparse(&r->ring, files);
    if (rc < 0) { io_uring_queue_exit(&r->ring); free(r); return rc; }
    r->files = files;
    unsigned workers[2] = {16, 16};                       // bounded (regular files), unbounded
    (void)io_uring_register_iowq_max_workers(&r->ring, workers);
    *out = r;
    return 0;
}

void pmll_uring_destroy(pmll_uring_t *r) {
    io_uring_queue_exit(&r->ring);
    free(r);
}

int pmll_uring_probe_ops(pmll_uring_t *r) {
    struct io_uring_probe *probe = io_uring_get_probe_ring(&r->ring);
    if (!probe) return -EOPNOTSUPP;
    int ops[] = {IORING_OP_OPENAT, IORING_OP_WRITE, IORING_OP_FSYNC, IORING_OP_CLOSE, IORING_OP_UNLINKAT};
    int ok = 1;
    for (unsigned i = 0; i < sizeof ops / sizeof ops[0]; i++) ok &= io_uring_opcode_supported(probe, ops[i]);
    io_uring_free_probe(probe);
    return ok ? 0 : -EOPNOTSUPP;
}

// user_data = file index << 3 | step (1 write, 2 fsync or a lone operation, 3 close).
// `lengths` (optional): a short write is an error. `closed` (optional): set for each close that
// ran, which released its descriptor even if it reported an error.
static int reap(pmll_uring_t *r, unsigned count, int *results, const size_t *lengths, unsigned char *closed) {
    for (unsigned done = 0; done < count; done++) {
        struct io_uring_cqe *cqe;
        int rc;
        do rc = io_uring_wait_cqe(&r->ring, &cqe); while (rc == -EINTR);
        if (rc < 0) return rc;
        int index = (int)(cqe->user_data >> 3);
        int step = (int)(cqe->user_data & 7);
        int res = cqe->res;
        io_uring_cqe_seen(&r->ring, cqe);
        if (closed && step == 3 && res != -ECANCELED) closed[index] = 1;
        // A chain member cancelled because an earlier one failed reports -ECANCELED: keep the
        // first real error. A short write is an error too.
        if (res < 0 && res != -ECANCELED && results[index] == 0) results[index] = res;
        // A short write to a new regular file means the filesystem ran out of space (or the
        // process hit RLIMIT_FSIZE): report it as the syscall path would.
        if (step == 1 && lengths && res >= 0 && results[index] == 0 && (size_t)res != lengths[index]) results[index] = -ENOSPC;
    }
    return 0;
}

int pmll_uring_write_files(pmll_uring_t *r, int n, const int *dirfds, const char *const *names,
                           const void *const *datas, const size_t *lengths, const unsigned *modes, int *results) {
    unsigned per = 4;
    unsigned sq = io_uring_sq_space_left(&r->ring);
    int group = (int)(r->files < sq / per ? r->files : sq / per);
    if (group < 1) return -EINVAL;
    memset(results, 0, sizeof(int) * (size_t)n);
    for (int base = 0; base < n; base += group) {
        int count = n - base < group ? n - base : group;
        unsigned submitted = 0;
        for (int k = 0; k < count; k++) {
            int i = base + k;
            unsigned slot = (unsigned)k;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
            // No O_CLOEXEC: direct descriptors never reach the fd table, and the kernel rejects it.
            io_uring_prep_openat_direct(sqe, dirfds[i], names[i], O_CREAT | O_EXCL | O_WRONLY, modes[i], slot);
            sqe->flags |= IOSQE_IO_LINK;
            sqe->user_data = (uint64_t)i << 3 | 0;
            sqe = io_uring_get_sqe(&r->ring);
            io_uring_prep_write(sqe, (int)slot, datas[i], (unsigned)lengths[i], 0);
            sqe->flags |= IOSQE_IO_LINK | IOSQE_FIXED_FILE;
            sqe->user_data = (uint64_t)i << 3 | 1;
            sqe = io_uring_get_sqe(&r->ring);
            io_uring_prep_fsync(sqe, (int)slot, 0);
            sqe->flags |= IOSQE_IO_LINK | IOSQE_FIXED_FILE;
            sqe->user_data = (uint64_t)i << 3 | 2;
            sqe = io_uring_get_sqe(&r->ring);
            io_uring_prep_close_direct(sqe, slot);
            sqe->user_data = (uint64_t)i << 3 | 3;
            submitted += per;
        }
        int rc = io_uring_submit(&r->ring);
        if (rc < 0) return rc;
        rc = reap(r, submitted, results, lengths, NULL);
        if (rc < 0) return rc;
        // A chain that failed had its close cancelled, which leaks the slot: close those slots
        // ourselves. Successful chains closed theirs already.
        unsigned closing = 0;
        for (int k = 0; k < count; k++) {
            if (results[base + k] == 0) continue;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
            io_uring_prep_close_direct(sqe, (unsigned)k);
            sqe->user_data = UINT64_MAX;
            closing++;
        }
        if (closing > 0) {
            rc = io_uring_submit_and_wait(&r->ring, closing);
            if (rc < 0) return rc;
            for (unsigned k = 0; k < closing; k++) {
                struct io_uring_cqe *cqe;
                if (io_uring_wait_cqe(&r->ring, &cqe) < 0) break;
                io_uring_cqe_seen(&r->ring, cqe);
            }
        }
    }
    return 0;
}

struct pmll_stage {
    pmll_uring_t *r;
    int n, error;
    unsigned pending;            // CQEs still to reap
    int *fds;                    // -1: never added
    int *results;
    unsigned char *closed;
};

pmll_stage_t *pmll_uring_stage_begin(pmll_uring_t *r, int n) {
    pmll_stage_t *s = calloc(1, sizeof *s);
    size_t count = (size_t)(n > 0 ? n : 1);
    if (!s) return NULL;
    s->r = r;
    s->n = n;
    s->fds = malloc(sizeof *s->fds * count);
    s->results = calloc(count, sizeof *s->results);
    s->closed = calloc(count, 1);
    if (!s->fds || !s->results || !s->closed) {
        free(s->fds); free(s->results); free(s->closed); free(s);
        return NULL;
    }
    for (int i = 0; i < n; i++) s->fds[i] = -1;
    return s;
}

static int reap_stage(pmll_stage_t *s, unsigned count) {
    int rc = reap(s->r, count, s->results, NULL, s->closed);
    if (rc == 0) s->pending -= count;
    return rc;
}

int pmll_uring_stage_add(pmll_stage_t *s, int i, int fd) {
    s->fds[i] = fd;
    if (s->error) return s->error;
    unsigned per = 2;
    if (io_uring_sq_space_left(&s->r->ring) < per) {
        int rc = io_uring_submit(&s->r->ring);
        if (rc < 0) return s->error = rc;
    }
    // Completions must fit the completion queue: reap some before adding more.
    while (s->pending + per > *s->r->ring.cq.kring_entries) {
        int rc = reap_stage(s, per);
        if (rc < 0) return s->error = rc;
    }
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->r->ring);
    io_uring_prep_fsync(sqe, fd, 0);
    sqe->flags |= IOSQE_IO_LINK;
    sqe->user_data = (uint64_t)i << 3 | 2;
    sqe = io_uring_get_sqe(&s->r->ring);
    io_uring_prep_close(sqe, fd);
    sqe->user_data = (uint64_t)i << 3 | 3;
    s->pending += per;
    return 0;
}

int pmll_uring_stage_submit(pmll_stage_t *s) {
    if (s->error) return s->error;
    int rc = io_uring_submit(&s->r->ring);
    return rc < 0 ? (s->error = rc) : 0;
}

int pmll_uring_stage_finish(pmll_stage_t *s, int *results) {
    int rc = pmll_uring_stage_submit(s);
    if (rc == 0) rc = reap_stage(s, s->pending);
    // Chains that failed (or never ran) had their close cancelled: the descriptor is still ours.
    for (int i = 0; i < s->n; i++) if (s->fds[i] >= 0 && !s->closed[i]) close(s->fds[i]);
    memcpy(results, s->results, sizeof(int) * (size_t)s->n);
    free(s->fds); free(s->results); free(s->closed); free(s);
    return rc;
}

// Submits one independent SQE per item, in groups that fit the submission queue, and reaps
// them. `prep` fills the SQE of item i.
static int each(pmll_uring_t *r, int n, int *results, void (*prep)(struct io_uring_sqe *, int, const void *), const void *ctx) {
    memset(results, 0, sizeof(int) * (size_t)n);
    unsigned sq = io_uring_sq_space_left(&r->ring);
    for (int base = 0; base < n; base += (int)sq) {
        int count = n - base < (int)sq ? n - base : (int)sq;
        for (int k = 0; k < count; k++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
            prep(sqe, base + k, ctx);
            sqe->user_data = (uint64_t)(base + k) << 3 | 2;
        }
        int rc = io_uring_submit(&r->ring);
        if (rc < 0) return rc;
        rc = reap(r, (unsigned)count, results, NULL, NULL);
        if (rc < 0) return rc;
    }
    return 0;
}

static void prep_fsync(struct io_uring_sqe *sqe, int i, const void *ctx) {
    io_uring_prep_fsync(sqe, ((const int *)ctx)[i], 0);
}

int pmll_uring_fsync_fds(pmll_uring_t *r, int n, const int *fds, int *results) {
    return each(r, n, results, prep_fsync, fds);
}

struct unlink_ctx { const int *dirfds; const char *const *names; };

static void prep_unlink(struct io_uring_sqe *sqe, int i, const void *ctx) {
    const struct unlink_ctx *c = ctx;
    io_uring_prep_unlinkat(sqe, c->dirfds[i], c->names[i], 0);
}

int pmll_uring_unlink(pmll_uring_t *r, int n, const int *dirfds, const char *const *names, int *results) {
    struct unlink_ctx c = {dirfds, names};
    return each(r, n, results, prep_unlink, &c);
}
