/* The C interface's test program: built by the test suite against an installed prefix
 * (pkg-config), never against the library's internal headers. One executable, one mode per
 * scenario; prints "ok ..." and exits 0, or names the first failed check and exits 1. */
#define _GNU_SOURCE
#include <pmll.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, " (last error: %s)\n", pmll_last_error()); exit(1); } } while (0)

static PMEMContextHandle *open_pool(const char *path) {
    PMEMContextHandle *ctx = pmem_context_create(path, 0, true);
    CHECK(ctx != NULL, "pmem_context_create(%s)", path);
    return ctx;
}

/* ---- counter: read-modify-write of a file under one lock, from threads ---- */

struct counter_args { PMLL_Lock *lock; int fd; int iterations; };

static void increment(int fd) {
    uint64_t value = 0;
    CHECK(pread(fd, &value, 8, 0) >= 0, "pread");
    value += 1;
    CHECK(pwrite(fd, &value, 8, 0) == 8, "pwrite");
}

static void *counter_thread(void *p) {
    struct counter_args *a = p;
    for (int i = 0; i < a->iterations; i++) {
        CPM_Result r = pmll_lock_acquire(a->lock, 0);
        CHECK(r == CPM_RESULT_SUCCESS, "acquire returned %d", (int)r);
        increment(a->fd);
        r = pmll_lock_release(a->lock);
        CHECK(r == CPM_RESULT_SUCCESS, "release returned %d", (int)r);
    }
    return NULL;
}

/* counter POOL LOCK FILE THREADS ITERATIONS: every thread shares one PMLL_Lock, as the
 * seed's `PMLL_Lock cache_lock;` is shared. */
static int counter(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    PMLL_Lock lock;
    CHECK(pmll_lock_init(&lock, argv[1], true, ctx) == CPM_RESULT_SUCCESS, "lock init");
    int fd = open(argv[2], O_RDWR | O_CREAT, 0600);
    CHECK(fd >= 0, "open %s", argv[2]);
    int threads = atoi(argv[3]);
    struct counter_args args = { &lock, fd, atoi(argv[4]) };
    pthread_t t[64];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, counter_thread, &args);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    pmll_lock_destroy(&lock);
    pmem_context_close(ctx);
    printf("ok counter\n");
    return 0;
}

/* increment FILE: one unlocked read-modify-write (run under `pmll lock`). */
static int increment_mode(char **argv) {
    int fd = open(argv[0], O_RDWR | O_CREAT, 0600);
    CHECK(fd >= 0, "open");
    increment(fd);
    return 0;
}

/* ---- robust8: glibc's tst-robust8 scenario over pool locks ---- */

#define R8_LOCKS 100
#define R8_THREADS 9

struct r8_shared {
    atomic_int held[R8_LOCKS];   /* 1 while the child holds lock i (exact once parked) */
    atomic_int parked;
    atomic_int stop;
};

static struct r8_shared *r8;
static PMLL_Lock r8_locks[R8_LOCKS];

static void *r8_thread(void *p) {
    unsigned seed = (unsigned)(uintptr_t)p * 7919u + (unsigned)getpid();
    int mine[R8_LOCKS];
    int count = 0;
    while (!atomic_load(&r8->stop)) {
        int op = rand_r(&seed) % 4;
        if (op == 3 && count > 0) {
            int k = rand_r(&seed) % count;
            int i = mine[k];
            atomic_store(&r8->held[i], 0);
            CHECK(pmll_lock_release(&r8_locks[i]) == CPM_RESULT_SUCCESS, "child release %d", i);
            mine[k] = mine[--count];
            continue;
        }
        if (count >= 6) continue;
        int i = rand_r(&seed) % R8_LOCKS;
        int already = 0;
        for (int k = 0; k < count; k++) already |= mine[k] == i;
        if (already) continue;
        CPM_Result r;
        if (op == 0) {
            r = pmll_lock_acquire(&r8_locks[i], 1 + rand_r(&seed) % 3);
        } else if (op == 1) {
            struct timespec past;
            clock_gettime(CLOCK_MONOTONIC, &past);
            past.tv_sec -= 1;
            r = pmll_lock_acquire_until(&r8_locks[i], &past);
        } else {
            r = pmll_lock_try_acquire(&r8_locks[i]);
        }
        if (r == CPM_RESULT_SUCCESS) {
            atomic_store(&r8->held[i], 1);
            mine[count++] = i;
        } else {
            CHECK(r == CPM_RESULT_LOCK_TIMEOUT, "child acquire of %d returned %d", i, (int)r);
        }
    }
    atomic_fetch_add(&r8->parked, 1);
    for (;;) pause();
}

static void r8_child(const char *pool) {
    PMEMContextHandle *ctx = open_pool(pool);
    char name[32];
    for (int i = 0; i < R8_LOCKS; i++) {
        snprintf(name, sizeof name, "robust8-%d", i);
        CHECK(pmll_lock_init(&r8_locks[i], name, true, ctx) == CPM_RESULT_SUCCESS, "child init %d", i);
    }
    pthread_t t;
    for (int i = 0; i < R8_THREADS; i++) pthread_create(&t, NULL, r8_thread, (void *)(uintptr_t)(i + 1));
    usleep(200000);
    /* Stop every thread between two operations, so `held` is exact, then die holding. */
    atomic_store(&r8->stop, 1);
    while (atomic_load(&r8->parked) < R8_THREADS) usleep(1000);
    kill(getpid(), SIGKILL);
}

/* robust8 POOL ROUNDS */
static int robust8(char **argv) {
    int rounds = atoi(argv[1]);
    r8 = mmap(NULL, sizeof *r8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(r8 != MAP_FAILED, "mmap");
    int total_died = 0;
    for (int round = 0; round < rounds; round++) {
        memset(r8, 0, sizeof *r8);
        pid_t child = fork();
        if (child == 0) { r8_child(argv[0]); _exit(3); }
        int status;
        CHECK(waitpid(child, &status, 0) == child, "waitpid");
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child did not die of SIGKILL (status %d)", status);
        PMEMContextHandle *ctx = open_pool(argv[0]);
        int died = 0, held = 0;
        for (int i = 0; i < R8_LOCKS; i++) {
            char name[32];
            snprintf(name, sizeof name, "robust8-%d", i);
            PMLL_Lock lock;
            CHECK(pmll_lock_init(&lock, name, true, ctx) == CPM_RESULT_SUCCESS, "parent init %d", i);
            CPM_Result r = pmll_lock_acquire(&lock, 5000);
            CHECK(r == CPM_RESULT_SUCCESS, "round %d: parent could not take lock %d (%d)", round, i, (int)r);
            bool d = pmll_lock_previous_owner_died(&lock);
            CHECK(d == (atomic_load(&r8->held[i]) == 1), "round %d: lock %d: owner died %d, child held %d",
                  round, i, d, atomic_load(&r8->held[i]));
            if (d) {
                PMLL_OwnerDeath death;
                CHECK(pmll_lock_owner_death(&lock, &death), "death details of %d", i);
                CHECK(death.pid == child, "lock %d: dead pid %d, child %d", i, death.pid, child);
                died++;
            }
            held += atomic_load(&r8->held[i]);
            CHECK(pmll_lock_release(&lock) == CPM_RESULT_SUCCESS, "parent release %d", i);
            pmll_lock_destroy(&lock);
        }
        total_died += died;
        pmem_context_close(ctx);
    }
    CHECK(total_died > 0, "no round left a lock held: the scenario tested nothing");
    printf("ok robust8 rounds=%d deaths=%d\n", rounds, total_died);
    return 0;
}

/* ---- hold POOL LOCK SECONDS: take the lock, say so, hold, release ---- */
static int hold(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    PMLL_Lock lock;
    CHECK(pmll_lock_init(&lock, argv[1], true, ctx) == CPM_RESULT_SUCCESS, "init");
    CPM_Result r = pmll_lock_acquire(&lock, 30000);
    CHECK(r == CPM_RESULT_SUCCESS, "acquire %d", (int)r);
    printf("acquired died=%d\n", pmll_lock_previous_owner_died(&lock));
    fflush(stdout);
    usleep((useconds_t)(atof(argv[2]) * 1e6));
    CHECK(pmll_lock_release(&lock) == CPM_RESULT_SUCCESS, "release");
    pmem_context_close(ctx);
    return 0;
}

/* ---- tx POOL: transactions ---- */
static int tx(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    PMLL_Transaction *t = pmll_transaction_begin(ctx);
    CHECK(t != NULL, "begin");
    CHECK(pmll_tx_set(t, "pkg/zlib/status", "installed", 9) == CPM_RESULT_SUCCESS, "set");
    char buf[64];
    size_t n = 0;
    CHECK(pmll_tx_get(t, "pkg/zlib/status", buf, sizeof buf, &n) == CPM_RESULT_SUCCESS && n == 9 && memcmp(buf, "installed", 9) == 0,
          "a transaction reads its own write");
    CHECK(pmll_tx_get(t, "pkg/zlib/status", buf, 4, &n) == PMLL_RESULT_TOO_LARGE && n == 9, "a small buffer says how much is needed");
    CHECK(pmll_tx_get(t, "pkg/none", buf, sizeof buf, &n) == PMLL_RESULT_NOT_FOUND, "missing key");
    CHECK(pmll_transaction_commit(t) == CPM_RESULT_SUCCESS, "commit");

    /* An aborted transaction leaves nothing. */
    t = pmll_transaction_begin(ctx);
    CHECK(pmll_tx_set(t, "pkg/zlib/status", "half-installed", 14) == CPM_RESULT_SUCCESS, "set 2");
    CHECK(pmll_tx_delete(t, "pkg/zlib/status") == CPM_RESULT_SUCCESS, "delete");
    CHECK(pmll_tx_get(t, "pkg/zlib/status", buf, sizeof buf, &n) == PMLL_RESULT_NOT_FOUND, "deleted in the transaction");
    CHECK(pmll_transaction_abort(t) == CPM_RESULT_SUCCESS, "abort");
    t = pmll_transaction_begin(ctx);
    CHECK(pmll_tx_get(t, "pkg/zlib/status", buf, sizeof buf, &n) == CPM_RESULT_SUCCESS && n == 9, "abort rolled back");
    CHECK(pmll_transaction_commit(t) == CPM_RESULT_SUCCESS, "read-only commit");

    /* Serializable: a read that changed before commit is a conflict, and nothing is written. */
    PMLL_Transaction *a = pmll_transaction_begin(ctx), *b = pmll_transaction_begin(ctx);
    CHECK(pmll_tx_get(a, "pkg/zlib/status", buf, sizeof buf, &n) == CPM_RESULT_SUCCESS, "a reads");
    CHECK(pmll_tx_set(b, "pkg/zlib/status", "removed", 7) == CPM_RESULT_SUCCESS, "b writes");
    CHECK(pmll_transaction_commit(b) == CPM_RESULT_SUCCESS, "b commits");
    CHECK(pmll_tx_set(a, "pkg/zlib/deps", "none", 4) == CPM_RESULT_SUCCESS, "a writes");
    CHECK(pmll_transaction_commit(a) == PMLL_RESULT_CONFLICT, "a conflicts");
    t = pmll_transaction_begin(ctx);
    CHECK(pmll_tx_get(t, "pkg/zlib/deps", buf, sizeof buf, &n) == PMLL_RESULT_NOT_FOUND, "a conflicting commit wrote nothing");
    CHECK(pmll_tx_get(t, "pkg/zlib/status", buf, sizeof buf, &n) == CPM_RESULT_SUCCESS && n == 7, "b's write stands");
    CHECK(pmll_tx_set(t, "pmll:internal", "x", 1) == CPM_RESULT_ERROR_INVALID_ARGS, "reserved keys are refused");
    static char big[(64 << 20) + 1];
    CHECK(pmll_tx_set(t, "big", big, sizeof big) == PMLL_RESULT_TOO_LARGE, "a value over 64 MiB is refused");
    CHECK(pmll_transaction_abort(t) == CPM_RESULT_SUCCESS, "abort 2");
    pmem_context_close(ctx);
    printf("ok tx\n");
    return 0;
}

/* ---- errors DIR: every misuse gets a code and a "pmll: " line ---- */
static void expect_error(CPM_Result got, int want, const char *what) {
    CHECK((int)got == want, "%s: got %d, want %d", what, (int)got, want);
    CHECK(strncmp(pmll_last_error(), "pmll: ", 6) == 0, "%s: last error '%s' does not start with 'pmll: '", what, pmll_last_error());
}

static int errors(char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/no/such/dir/pool", argv[0]);
    CHECK(pmem_context_open(path) == NULL, "open of a missing pool");
    CHECK(strstr(pmll_last_error(), "does not exist") != NULL, "missing pool message: %s", pmll_last_error());
    snprintf(path, sizeof path, "%s/garbage", argv[0]);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 100000; i++) fputc('x', f);
    fclose(f);
    CHECK(pmem_context_open(path) == NULL && strstr(pmll_last_error(), "not a PMLL pool"), "foreign file: %s", pmll_last_error());

    snprintf(path, sizeof path, "%s/pool", argv[0]);
    PMEMContextHandle *ctx = open_pool(path);
    PMLL_Lock lock;
    memset(&lock, 0, sizeof lock);
    expect_error(pmll_lock_acquire(&lock, 0), CPM_RESULT_ERROR_INVALID_ARGS, "uninitialised lock");
    expect_error(pmll_lock_acquire(NULL, 0), CPM_RESULT_ERROR_INVALID_ARGS, "NULL lock");
    expect_error(pmll_lock_init(&lock, NULL, true, ctx), CPM_RESULT_ERROR_INVALID_ARGS, "NULL name");
    char longname[300];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    expect_error(pmll_lock_init(&lock, longname, true, ctx), CPM_RESULT_ERROR_INVALID_ARGS, "name too long");
    CHECK(pmll_lock_init(&lock, "errors", true, ctx) == CPM_RESULT_SUCCESS, "init");
    expect_error(pmll_lock_release(&lock), PMLL_RESULT_NOT_HELD, "release without acquire");
    CHECK(pmll_lock_acquire(&lock, 0) == CPM_RESULT_SUCCESS, "acquire");
    expect_error(pmll_lock_acquire(&lock, 0), CPM_RESULT_ERROR_INVALID_ARGS, "the holding thread asks again");
    CHECK(strstr(pmll_last_error(), "already held by this thread"), "recursion message: %s", pmll_last_error());
    CHECK(pmll_lock_release(&lock) == CPM_RESULT_SUCCESS, "release after the refused recursion");

    /* Leveled locks: the hierarchy is checked per thread. */
    PMLL_Lock fs, pkg, pkg2;
    CHECK(pmll_lock_init_level(&fs, "errors-fs", PMLL_LEVEL_FILESYSTEM, ctx) == CPM_RESULT_SUCCESS, "init fs");
    CHECK(pmll_lock_init_level(&pkg, "errors-pkg", PMLL_LEVEL_PACKAGE, ctx) == CPM_RESULT_SUCCESS, "init pkg");
    CHECK(pmll_lock_init_level(&pkg2, "errors-pkg2", PMLL_LEVEL_PACKAGE, ctx) == CPM_RESULT_SUCCESS, "init pkg2");
    expect_error(pmll_lock_init_level(&lock, "errors-pkg", PMLL_LEVEL_NETWORK, ctx), CPM_RESULT_ERROR_INVALID_ARGS, "level mismatch");
    CHECK(pmll_lock_acquire(&pkg, 1000) == CPM_RESULT_SUCCESS, "pkg");
    CHECK(pmll_lock_acquire(&fs, 1000) == CPM_RESULT_SUCCESS, "fs after pkg");
    expect_error(pmll_lock_acquire(&pkg2, 1000), PMLL_RESULT_HIERARCHY_VIOLATION, "pkg2 after fs");
    CHECK(strstr(pmll_last_error(), "errors-fs") != NULL, "the violation names the held lock: %s", pmll_last_error());
    CHECK(pmll_lock_release(&pkg) == CPM_RESULT_SUCCESS, "out-of-order release");
    expect_error(pmll_lock_acquire(&pkg2, 1000), PMLL_RESULT_HIERARCHY_VIOLATION, "pkg2 while fs is still held");
    CHECK(pmll_lock_release(&fs) == CPM_RESULT_SUCCESS, "release fs");
    CHECK(pmll_lock_acquire(&pkg2, 1000) == CPM_RESULT_SUCCESS, "pkg2 with nothing held");
    CHECK(pmll_lock_release(&pkg2) == CPM_RESULT_SUCCESS, "release pkg2");
    /* Unleveled locks are not checked: any order. */
    PMLL_Lock a, b;
    CHECK(pmll_lock_init(&a, "errors-a", true, ctx) == 0 && pmll_lock_init(&b, "errors-b", true, ctx) == 0, "init a b");
    CHECK(pmll_lock_acquire(&b, 0) == 0 && pmll_lock_acquire(&a, 0) == 0, "unleveled in any order");
    CHECK(pmll_lock_release(&b) == 0 && pmll_lock_release(&a) == 0, "release a b");

    PMLL_LockStats stats;
    CHECK(pmll_lock_get_stats(&a, &stats) == CPM_RESULT_SUCCESS && stats.acquisitions >= 1 && stats.holder_pid == 0, "stats");
    CHECK(pmem_context_check(ctx) == CPM_RESULT_SUCCESS, "check of a sound pool");
    PMLL_PoolStatus status;
    CHECK(pmem_context_status(ctx, &status) == CPM_RESULT_SUCCESS && status.processes >= 1 && status.locks >= 5
          && status.lock_capacity == 1024 && status.key_capacity > 0, "pool status");

    /* A forked child cannot use its parent's participant; it opens its own. */
    pid_t kid = fork();
    if (kid == 0) {
        if (pmll_lock_acquire(&a, 0) != CPM_RESULT_ERROR_INVALID_ARGS || !strstr(pmll_last_error(), "forked child")) _exit(2);
        if (pmll_transaction_begin(ctx) != NULL) _exit(3);
        PMEMContextHandle *own = pmem_context_open(path);
        PMLL_Lock mine;
        if (!own || pmll_lock_init(&mine, "errors-a", true, own) || pmll_lock_acquire(&mine, 1000) || pmll_lock_release(&mine)) _exit(4);
        pmem_context_close(own);
        pmem_context_close(ctx);   /* the parent's: left alone in the child */
        _exit(0);
    }
    int kid_status;
    CHECK(waitpid(kid, &kid_status, 0) == kid && WIFEXITED(kid_status) && WEXITSTATUS(kid_status) == 0, "forked child: status %d", kid_status);
    CHECK(pmll_lock_acquire(&a, 1000) == 0 && pmll_lock_release(&a) == 0, "the parent's context still works after the child closed it");
    CHECK(pmll_transaction_begin(NULL) == NULL && (int)0 == 0, "no default pool");
    CHECK(strstr(pmll_last_error(), "pmll_init") != NULL, "no default pool message: %s", pmll_last_error());
    pmem_context_close(ctx);
    printf("ok errors\n");
    return 0;
}


/* ---- seed POOL DIR LOG N: the design's snippets, run by several processes at once ---- */

struct seed_op { const char *log; int index; };

static PromiseValue logged_operation(PromiseValue previous, void *user_data) {
    (void)previous;
    struct seed_op *op = user_data;
    char line[64];
    int fd = open(op->log, O_WRONLY | O_APPEND | O_CREAT, 0600);
    CHECK(fd >= 0, "open log");
    snprintf(line, sizeof line, "start %d %d\n", (int)getpid(), op->index);
    CHECK(write(fd, line, strlen(line)) > 0, "write");
    usleep(2000);   /* another process's operation would land here if the queue let it */
    snprintf(line, sizeof line, "end %d %d\n", (int)getpid(), op->index);
    CHECK(write(fd, line, strlen(line)) > 0, "write");
    close(fd);
    return (PromiseValue)(intptr_t)(op->index + 1);
}

static int failing_attempts;
static PromiseValue failing_operation(PromiseValue previous, void *user_data) {
    (void)previous; (void)user_data;
    failing_attempts++;
    pmll_operation_fail("registry unreachable");
    return NULL;
}

static PromiseValue error_handler(PromiseValue reason, void *user_data) {
    (void)user_data;
    CHECK(reason && strcmp((const char *)reason, "registry unreachable") == 0, "error_fn gets the reason");
    return (PromiseValue)"handled";
}

static PromiseValue double_it(PromiseValue value, void *user_data) {
    (void)user_data;
    return (PromiseValue)((intptr_t)value * 2);
}

typedef struct { uint64_t installed; uint64_t version; } package_state_t;

static int seed(char **argv) {
    PMEMContextHandle *pmem_ctx = open_pool(argv[0]);
    const char *dir = argv[1], *log = argv[2];
    int n = atoi(argv[3]);
    CHECK(n >= 1 && n <= 64, "1 to 64 operations");

    /* Locking Mechanisms */
    PMLL_Lock cache_lock;
    CHECK(pmll_lock_init(&cache_lock, "package_cache", true, pmem_ctx) == CPM_RESULT_SUCCESS, "lock init");
    CHECK(pmll_lock_acquire(&cache_lock, 5000) == CPM_RESULT_SUCCESS, "acquire with 5000 ms");
    usleep(1000);
    CHECK(pmll_lock_release(&cache_lock) == CPM_RESULT_SUCCESS, "release");

    /* Hardened Resource Queues: operations of every process never interleave. */
    PMLL_HardenedResourceQueue *queue = pmll_queue_create("package_cache", true, pmem_ctx);
    CHECK(queue != NULL, "queue create");
    struct seed_op ops[64];
    Promise *promises[64] = {0};
    for (int i = 0; i < n; i++) {
        ops[i] = (struct seed_op){ log, i };
        promises[i] = pmll_execute_hardened_operation(queue, logged_operation, NULL, &ops[i]);
        CHECK(promises[i] != NULL, "submit %d", i);
    }
    Promise *chained = promise_then(promises[0], double_it, NULL, NULL);
    for (int i = 0; i < n; i++) {
        CHECK(promise_wait(promises[i], 60000), "operation %d settles", i);
        CHECK(promise_state(promises[i]) == PROMISE_FULFILLED, "operation %d fulfilled", i);
        CHECK((intptr_t)promise_value(promises[i]) == i + 1, "operation %d's value", i);
        promise_free(promises[i]);
    }
    CHECK(promise_wait(chained, 10000) && (intptr_t)promise_value(chained) == 2, "promise_then runs on the value");
    promise_free(chained);

    /* A failing operation: retried, then error_fn, then rejected with error_fn's result. */
    uint64_t failed_before = 0, failed_after = 0;
    pmll_queue_get_stats(queue, NULL, &failed_before, NULL);
    CHECK(pmll_queue_set_retry(queue, 2, 1) == CPM_RESULT_SUCCESS, "set retry");
    Promise *failing = pmll_execute_hardened_operation(queue, failing_operation, error_handler, NULL);
    CHECK(promise_wait(failing, 60000) && promise_state(failing) == PROMISE_REJECTED, "the failing operation is rejected");
    CHECK(strcmp((const char *)promise_value(failing), "handled") == 0, "rejected with error_fn's value");
    CHECK(failing_attempts == 3, "1 attempt + 2 retries, got %d", failing_attempts);
    promise_free(failing);
    pmll_queue_get_stats(queue, NULL, &failed_after, NULL);
    CHECK(failed_after >= failed_before + 1, "a failed operation counts once or more (other processes too)");

    /* Batching Operations, under this process's own directory. */
    char root[4096], path[4200];
    snprintf(root, sizeof root, "%s/%d", dir, (int)getpid());
    CHECK(mkdir(root, 0755) == 0, "mkdir %s", root);
    snprintf(path, sizeof path, "%s/old_file.txt", root);
    FILE *f = fopen(path, "w"); fputs("old", f); fclose(f);
    CHECK(pmll_queue_set_batch_root(queue, root) == CPM_RESULT_SUCCESS, "batch root");
    const char *data1 = "one", *data2 = "two";
    BatchOperation batch[] = {
        {WRITE_FILE, "file1.txt", data1, 0},
        {WRITE_FILE, "file2.txt", data2, 0},
        {DELETE_FILE, "old_file.txt", NULL, 0}
    };
    Promise *batch_result = pmll_execute_batch_operation(queue, batch, 3);
    CHECK(batch_result && promise_wait(batch_result, 60000) && promise_state(batch_result) == PROMISE_FULFILLED,
          "batch: %s", batch_result ? (const char *)promise_value(batch_result) : pmll_last_error());
    promise_free(batch_result);
    CHECK(access(path, F_OK) != 0, "old_file.txt deleted");
    BatchOperation escaping[] = {{WRITE_FILE, "../escape.txt", "x", 0}};
    Promise *refused = pmll_execute_batch_operation(queue, escaping, 1);
    CHECK(refused && promise_wait(refused, 60000) && promise_state(refused) == PROMISE_REJECTED, "a path leaving the root is refused");
    CHECK(strncmp((const char *)promise_value(refused), "pmll: ", 6) == 0, "reason: %s", (const char *)promise_value(refused));
    promise_free(refused);

    /* Queue Statistics */
    uint64_t completed, failed, pending;
    pmll_queue_get_stats(queue, &completed, &failed, &pending);
    printf("Queue stats: %lu completed, %lu failed, %lu pending\n", (unsigned long)completed, (unsigned long)failed, (unsigned long)pending);
    CHECK(completed >= (uint64_t)n + 1, "completed counts this process's operations");

    /* Transaction Support: an aborted transaction changes nothing. */
    package_state_t *package_state = pmll_object(pmem_ctx, "package_state", sizeof *package_state);
    CHECK(package_state != NULL, "object");
    /* The object is guarded by cache_lock (the other process writes it too). */
    CHECK(pmll_lock_acquire(&cache_lock, 5000) == CPM_RESULT_SUCCESS, "lock for the object");
    package_state_t before = *package_state, new_state = { 1, before.version + 1 };
    PMLL_Transaction *tx = pmll_transaction_begin(pmem_ctx);
    CHECK(pmem_write(tx, package_state, &new_state, sizeof new_state) == CPM_RESULT_SUCCESS, "pmem_write");
    CHECK(pmll_transaction_abort(tx) == CPM_RESULT_SUCCESS, "abort");
    CHECK(memcmp(package_state, &before, sizeof before) == 0, "abort left the object as it was");
    new_state = (package_state_t){ 1, before.version + 1 };
    tx = pmll_transaction_begin(pmem_ctx);
    CHECK(pmem_write(tx, package_state, &new_state, sizeof new_state) == CPM_RESULT_SUCCESS, "pmem_write 2");
    CHECK(package_state->version == before.version, "nothing shows before the commit");
    CHECK(pmll_transaction_commit(tx) == CPM_RESULT_SUCCESS, "commit");
    CHECK(package_state->version == before.version + 1 && package_state->installed == 1, "the commit shows");
    CHECK(pmll_lock_release(&cache_lock) == CPM_RESULT_SUCCESS, "release");
    int outside = 0;
    tx = pmll_transaction_begin(pmem_ctx);
    CHECK(pmem_write(tx, &outside, &outside, sizeof outside) == CPM_RESULT_ERROR_INVALID_ARGS, "pmem_write outside an object is refused");
    CHECK(pmem_write(tx, (char *)package_state + 8, &new_state, sizeof new_state) == CPM_RESULT_ERROR_INVALID_ARGS, "past an object's end is refused");
    pmll_transaction_abort(tx);
    CHECK(pmll_object(pmem_ctx, "package_state", 8) == NULL && strstr(pmll_last_error(), "16 bytes"), "another size is refused: %s", pmll_last_error());

    pmll_queue_free(queue);
    pmll_lock_destroy(&cache_lock);
    pmem_context_close(pmem_ctx);
    printf("ok seed\n");
    return 0;
}

/* ---- objects POOL ACK STEPS / objects-check POOL ACK: pmem_write across crashes ---- */

typedef struct { uint64_t a, b, sum, version; } pair_t;

static int objects(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    int steps = atoi(argv[2]);
    pair_t *pair = pmll_object(ctx, "pair", sizeof *pair);
    CHECK(pair != NULL, "object");
    PMLL_Lock lock;
    CHECK(pmll_lock_init(&lock, "pair", true, ctx) == CPM_RESULT_SUCCESS, "lock");
    int ack = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0600);
    CHECK(ack >= 0, "ack");
    for (int step = 0; step < steps; step++) {
        CHECK(pmll_lock_acquire(&lock, 30000) == CPM_RESULT_SUCCESS, "acquire");
        uint64_t v = pair->version + 1;
        pair_t next = { v, 2 * v, 3 * v, v };
        PMLL_Transaction *tx = pmll_transaction_begin(ctx);
        CHECK(tx != NULL, "begin");
        /* Field by field, so that a torn commit would show. */
        CHECK(pmem_write(tx, &pair->a, &next.a, 8) == 0 && pmem_write(tx, &pair->b, &next.b, 8) == 0, "write a b");
        char text[32];
        snprintf(text, sizeof text, "%llu", (unsigned long long)v);
        CHECK(pmll_tx_set(tx, "pair/version", text, strlen(text)) == 0, "set");
        CHECK(pmem_write(tx, &pair->sum, &next.sum, 16) == 0, "write sum version");
        if (step % 3 == 2) {
            CHECK(pmll_transaction_abort(tx) == 0, "abort");
        } else {
            CPM_Result r = pmll_transaction_commit(tx);
            CHECK(r == CPM_RESULT_SUCCESS, "commit %d", (int)r);
            char line[32];
            snprintf(line, sizeof line, "%llu\n", (unsigned long long)v);
            CHECK(write(ack, line, strlen(line)) > 0 && fsync(ack) == 0, "ack");
        }
        CHECK(pmll_lock_release(&lock) == CPM_RESULT_SUCCESS, "release");
    }
    printf("ok objects version=%llu\n", (unsigned long long)pair->version);
    return 0;
}

static int objects_check(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    pair_t *pair = pmll_object(ctx, "pair", sizeof *pair);
    CHECK(pair != NULL, "object");
    uint64_t acked = 0;
    FILE *f = fopen(argv[1], "r");
    if (f) { unsigned long long v; while (fscanf(f, "%llu", &v) == 1) acked = v; fclose(f); }
    pair_t p = *pair;
    int bad = 0;
    if (p.a != p.version || p.b != 2 * p.version || p.sum != 3 * p.version) {
        printf("violation: torn object a=%llu b=%llu sum=%llu version=%llu\n", (unsigned long long)p.a,
               (unsigned long long)p.b, (unsigned long long)p.sum, (unsigned long long)p.version);
        bad = 1;
    }
    if (p.version < acked || p.version > acked + 1) {
        printf("violation: version %llu, last acknowledged %llu\n", (unsigned long long)p.version, (unsigned long long)acked);
        bad = 1;
    }
    PMLL_Transaction *tx = pmll_transaction_begin(ctx);
    char text[32] = {0};
    size_t n = 0;
    CPM_Result r = pmll_tx_get(tx, "pair/version", text, sizeof text - 1, &n);
    uint64_t stored = r == CPM_RESULT_SUCCESS ? strtoull(text, NULL, 10) : 0;
    if (stored != p.version) {
        printf("violation: the key says version %llu, the object %llu\n", (unsigned long long)stored, (unsigned long long)p.version);
        bad = 1;
    }
    pmll_transaction_abort(tx);
    if (pmem_context_check(ctx) != CPM_RESULT_SUCCESS) {
        printf("violation: %s\n", pmll_last_error());
        bad = 1;
    }
    if (!bad) printf("ok objects-check version=%llu acked=%llu\n", (unsigned long long)p.version, (unsigned long long)acked);
    return bad;
}


/* ---- try POOL LOCK: one try-acquire, reporting what it found ---- */
static int try_mode(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    PMLL_Lock lock;
    CHECK(pmll_lock_init(&lock, argv[1], true, ctx) == CPM_RESULT_SUCCESS, "init");
    CPM_Result r = pmll_lock_try_acquire(&lock);
    if (r == CPM_RESULT_LOCK_TIMEOUT) { printf("busy\n"); return 0; }
    CHECK(r == CPM_RESULT_SUCCESS, "try %d", (int)r);
    PMLL_OwnerDeath death;
    if (pmll_lock_owner_death(&lock, &death)) printf("taken died=1 pid=%d command=%s\n", death.pid, death.command);
    else printf("taken died=0\n");
    CHECK(pmll_lock_release(&lock) == CPM_RESULT_SUCCESS, "release");
    return 0;
}

/* ---- queue-hang POOL: an operation that never finishes (killed by the test) ---- */
static PromiseValue hang_operation(PromiseValue previous, void *user_data) {
    (void)previous; (void)user_data;
    printf("running\n");
    fflush(stdout);
    for (;;) pause();
    return NULL;
}

static int queue_hang(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    PMLL_HardenedResourceQueue *queue = pmll_queue_create("downloads", true, ctx);
    CHECK(queue != NULL, "queue");
    Promise *p = pmll_execute_hardened_operation(queue, hang_operation, NULL, NULL);
    CHECK(p != NULL, "submit");
    promise_wait(p, 0);
    return 1;
}

/* ---- queue-recover POOL: recovery hands the dead process's operation to the callback ---- */
static int recovered_calls;
static pthread_t recover_caller;
static bool recover_download(const PMLL_AbandonedOperation *op, void *user_data) {
    (void)user_data;
    CHECK(pthread_equal(pthread_self(), recover_caller), "the recovery callback runs on the thread that asked for recovery");
    usleep(100000);   /* a callback may block */
    printf("recovering queue=%s ticket=%llu pid=%d attempts=%u\n", op->queue, (unsigned long long)op->ticket, op->owner_pid, op->attempts);
    recovered_calls++;
    return true;
}

static int queue_recover(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    PMLL_HardenedResourceQueue *queue = pmll_queue_create("downloads", true, ctx);
    CHECK(queue != NULL, "queue");
    recover_caller = pthread_self();
    CHECK(pmll_queue_recover_operations(queue, ctx) == CPM_RESULT_SUCCESS, "recover without a handler");
    CHECK(recovered_calls == 0, "no handler, no call");
    CHECK(pmll_queue_set_recovery_handler(queue, recover_download, NULL) == CPM_RESULT_SUCCESS, "handler");
    CHECK(pmll_queue_recover_operations(queue, ctx) == CPM_RESULT_SUCCESS, "recover");
    CHECK(recovered_calls == 1, "one abandoned operation, one call (%d)", recovered_calls);
    CHECK(pmll_queue_recover_operations(queue, NULL) == CPM_RESULT_SUCCESS, "recover again");
    CHECK(recovered_calls == 1, "a recovered operation is not handed over twice (%d)", recovered_calls);
    PMLL_QueueStats stats;
    CHECK(pmll_queue_get_full_stats(queue, &stats) == CPM_RESULT_SUCCESS && stats.abandoned == 1 && stats.recovered == 1,
          "abandoned %llu recovered %llu", (unsigned long long)stats.abandoned, (unsigned long long)stats.recovered);
    /* The queue works again. */
    Promise *p = pmll_execute_hardened_operation(queue, double_it, NULL, (void *)1);
    CHECK(promise_wait(p, 30000) && promise_state(p) == PROMISE_FULFILLED, "an operation after recovery");
    promise_free(p);
    pmll_queue_free(queue);
    printf("ok queue-recover\n");
    return 0;
}

/* ---- global: pmll_init and the default pool ($PMLL_POOL) ---- */
static PromiseValue return_seven(PromiseValue previous, void *user_data) {
    (void)previous; (void)user_data;
    return (PromiseValue)(intptr_t)7;
}

static int global_mode(void) {
    char expected[32];
    snprintf(expected, sizeof expected, "%d.%d.%d", PMLL_VERSION_MAJOR, PMLL_VERSION_MINOR, PMLL_VERSION_PATCH);
    CHECK(strcmp(pmll_get_version(), expected) == 0, "version %s", pmll_get_version());
    PMLL_Lock lock;
    expect_error(pmll_lock_init(&lock, "global", true, NULL), CPM_RESULT_ERROR_NOT_INITIALIZED, "NULL context before pmll_init");
    CHECK(pmll_default_context() == NULL && pmll_get_default_file_queue() == NULL, "nothing before pmll_init");
    CHECK(pmll_init_global_system(), "pmll_init_global_system");
    CHECK(pmll_init(NULL, 0) == CPM_RESULT_SUCCESS, "a second pmll_init");
    PMEMContextHandle *ctx = pmll_default_context();
    CHECK(ctx != NULL && strcmp(pmem_context_path(ctx), getenv("PMLL_POOL")) == 0, "the default pool is $PMLL_POOL");
    CHECK(pmll_lock_init(&lock, "global", true, NULL) == CPM_RESULT_SUCCESS, "NULL context: the default pool");
    CHECK(pmll_lock_acquire(&lock, 1000) == CPM_RESULT_SUCCESS && pmll_lock_release(&lock) == CPM_RESULT_SUCCESS, "lock");
    PMLL_HardenedResourceQueue *files = pmll_get_default_file_queue();
    CHECK(files != NULL && files == pmll_get_default_file_queue(), "one default file queue");
    Promise *p = pmll_execute_hardened_operation(files, return_seven, NULL, NULL);
    CHECK(promise_wait(p, 30000) && (intptr_t)promise_value(p) == 7, "an operation on the default file queue");
    promise_free(p);
    PMLL_HardenedResourceQueue *net = pmll_queue_create("network", false, NULL);
    CHECK(net != NULL, "a non-persistent queue of the default pool");
    CHECK(pmll_queue_create("network", true, NULL) == NULL && strstr(pmll_last_error(), "not persistent"), "persistence must match: %s", pmll_last_error());
    pmll_queue_free(net);
    pmll_lock_destroy(&lock);
    pmll_shutdown_global_system();
    CHECK(pmll_default_context() == NULL, "shut down");
    expect_error(pmll_lock_init(&lock, "global", true, NULL), CPM_RESULT_ERROR_NOT_INITIALIZED, "NULL context after shutdown");
    printf("ok global\n");
    return 0;
}

/* ---- bench POOL N: uncontended acquire+release against a glibc robust pshared mutex ---- */
static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int bench(char **argv) {
    PMEMContextHandle *ctx = open_pool(argv[0]);
    long n = atol(argv[1]);
    PMLL_Lock lock;
    CHECK(pmll_lock_init(&lock, "bench-c", true, ctx) == CPM_RESULT_SUCCESS, "init");
    pthread_mutex_t *m = mmap(NULL, sizeof *m, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &attr);
    double best_pmll = 1e18, best_glibc = 1e18;
    for (int round = 0; round < 5; round++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++) { pmll_lock_acquire(&lock, 0); pmll_lock_release(&lock); }
        double t1 = now_ns();
        for (long i = 0; i < n; i++) { pthread_mutex_lock(m); pthread_mutex_unlock(m); }
        double t2 = now_ns();
        double p = (t1 - t0) / n, g = (t2 - t1) / n;
        printf("round %d pmll %.2f ns glibc %.2f ns ratio %.2f\n", round, p, g, p / g);
        if (p < best_pmll) best_pmll = p;
        if (g < best_glibc) best_glibc = g;
    }
    printf("ok bench pmll_ns=%.2f glibc_ns=%.2f ratio=%.2f\n", best_pmll, best_glibc, best_pmll / best_glibc);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: pmll_c_test MODE ARGS...\n"); return 64; }
    const char *mode = argv[1];
    char **rest = argv + 2;
    int n = argc - 2;
    if (!strcmp(mode, "counter") && n == 5) return counter(rest);
    if (!strcmp(mode, "increment") && n == 1) return increment_mode(rest);
    if (!strcmp(mode, "robust8") && n == 2) return robust8(rest);
    if (!strcmp(mode, "hold") && n == 3) return hold(rest);
    if (!strcmp(mode, "tx") && n == 1) return tx(rest);
    if (!strcmp(mode, "errors") && n == 1) return errors(rest);
    if (!strcmp(mode, "bench") && n == 2) return bench(rest);
    if (!strcmp(mode, "seed") && n == 4) return seed(rest);
    if (!strcmp(mode, "try") && n == 2) return try_mode(rest);
    if (!strcmp(mode, "queue-hang") && n == 1) return queue_hang(rest);
    if (!strcmp(mode, "queue-recover") && n == 1) return queue_recover(rest);
    if (!strcmp(mode, "global") && n == 0) return global_mode();
    if (!strcmp(mode, "objects") && n == 3) return objects(rest);
    if (!strcmp(mode, "objects-check") && n == 2) return objects_check(rest);
    fprintf(stderr, "pmll_c_test: unknown mode or wrong arguments: %s\n", mode);
    return 64;
}
