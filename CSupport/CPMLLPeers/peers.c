#define _GNU_SOURCE
#include <stdio.h>
#include "cpmll_peers.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <libpmemobj.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <string.h>
#include <sys/file.h>
#include <sys/vfs.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <time.h>

size_t peers_robust_size(void) { return sizeof(pthread_mutex_t); }

int peers_robust_init(void *mutex) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init((pthread_mutex_t *)mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    return -rc;
}

int peers_robust_lock(void *mutex) {
    int rc = pthread_mutex_lock((pthread_mutex_t *)mutex);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent((pthread_mutex_t *)mutex);
        return 1;
    }
    return -rc;
}

int peers_robust_unlock(void *mutex) { return -pthread_mutex_unlock((pthread_mutex_t *)mutex); }

size_t peers_rwlock_size(void) { return sizeof(pthread_rwlock_t); }

int peers_rwlock_init(void *rwlock) {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    int rc = pthread_rwlock_init((pthread_rwlock_t *)rwlock, &attr);
    pthread_rwlockattr_destroy(&attr);
    return -rc;
}

int peers_rwlock_rdlock(void *rwlock) { return -pthread_rwlock_rdlock((pthread_rwlock_t *)rwlock); }
int peers_rwlock_wrlock(void *rwlock) { return -pthread_rwlock_wrlock((pthread_rwlock_t *)rwlock); }
int peers_rwlock_unlock(void *rwlock) { return -pthread_rwlock_unlock((pthread_rwlock_t *)rwlock); }

int peers_rwlock_timedwrlock(void *rwlock, int64_t timeout_ns) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ns = ts.tv_nsec + timeout_ns;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    return -pthread_rwlock_timedwrlock((pthread_rwlock_t *)rwlock, &ts);
}

int peers_flock(int fd, int operation) { return flock(fd, operation) == 0 ? 0 : -errno; }
int peers_lock_sh(void) { return LOCK_SH; }
int peers_lock_ex(void) { return LOCK_EX; }
int peers_lock_un(void) { return LOCK_UN; }
int peers_lock_nb(void) { return LOCK_NB; }

int peers_flock_pair(int fd) {
    if (flock(fd, LOCK_EX) != 0) return -errno;
    if (flock(fd, LOCK_UN) != 0) return -errno;
    return 0;
}

int peers_ofd_pair(int fd) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_SETLKW, &fl) != 0) return -errno;
    fl.l_type = F_UNLCK;
    if (fcntl(fd, F_OFD_SETLK, &fl) != 0) return -errno;
    return 0;
}

uint64_t peers_cas_pairs(uint32_t *word, uint64_t n) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (uint64_t i = 0; i < n; i++) {
        uint32_t expected = 0;
        while (!__atomic_compare_exchange_n(word, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) expected = 0;
        __atomic_store_n(word, 0, __ATOMIC_RELEASE);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (uint64_t)((b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
}

int64_t peers_filesystem_type(const char *path) {
    struct statfs st;
    return statfs(path, &st) == 0 ? (int64_t)st.f_type : 0;
}

uint64_t peers_inode_alloc_ns(const char *dir, int n) {
    if (n <= 0) return 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int *fds = dfd >= 0 ? calloc((size_t)n, sizeof(int)) : NULL;
    if (!fds) {
        if (dfd >= 0) close(dfd);
        return 0;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int opened = 0;
    while (opened < n && (fds[opened] = openat(dfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600)) >= 0) opened++;
    clock_gettime(CLOCK_MONOTONIC, &b);
    for (int i = 0; i < opened; i++) close(fds[i]);
    free(fds);
    close(dfd);
    if (opened < n) return 0;
    return ((uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec) / (uint64_t)n;
}

uint64_t peers_process_cpu_ns(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return ((uint64_t)r.ru_utime.tv_sec + (uint64_t)r.ru_stime.tv_sec) * 1000000000u
         + ((uint64_t)r.ru_utime.tv_usec + (uint64_t)r.ru_stime.tv_usec) * 1000u;
}

void *peers_sqlite_open(const char *path) {
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) return NULL;
    sqlite3_busy_timeout(db, 60000);
    const char *setup =
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
        "CREATE TABLE IF NOT EXISTS ops(ticket INTEGER PRIMARY KEY AUTOINCREMENT, state INTEGER, owner INTEGER, kind TEXT, at INTEGER);"
        "CREATE INDEX IF NOT EXISTS ops_open ON ops(state, ticket);";
    if (sqlite3_exec(db, setup, NULL, NULL, NULL) != SQLITE_OK) { sqlite3_close(db); return NULL; }
    return db;
}

void peers_sqlite_close(void *db) { sqlite3_close((sqlite3 *)db); }

static int exec1(sqlite3 *db, const char *sql, sqlite3_int64 value, sqlite3_int64 *out) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    if (value >= 0) sqlite3_bind_int64(st, 1, value);
    int rc = sqlite3_step(st);
    if (out && rc == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return (rc == SQLITE_DONE || rc == SQLITE_ROW) ? 0 : -1;
}

int peers_sqlite_operation(void *handle, int owner) {
    sqlite3 *db = handle;
    sqlite3_int64 ticket = 0, oldest = -1;
    if (exec1(db, "BEGIN IMMEDIATE", -1, NULL) || exec1(db, "INSERT INTO ops(state, owner, kind, at) VALUES (1, ?, 'bench', 0)", owner, NULL)) return -1;
    ticket = sqlite3_last_insert_rowid(db);
    if (exec1(db, "COMMIT", -1, NULL)) return -1;
    for (;;) {
        if (exec1(db, "SELECT MIN(ticket) FROM ops WHERE state < 3", -1, &oldest)) return -1;
        if (oldest == ticket) break;
        usleep(50);
    }
    if (exec1(db, "BEGIN IMMEDIATE", -1, NULL) || exec1(db, "UPDATE ops SET state = 2 WHERE ticket = ?", ticket, NULL) || exec1(db, "COMMIT", -1, NULL)) return -1;
    if (exec1(db, "BEGIN IMMEDIATE", -1, NULL) || exec1(db, "UPDATE ops SET state = 3 WHERE ticket = ?", ticket, NULL) || exec1(db, "COMMIT", -1, NULL)) return -1;
    return 0;
}

struct peers_kv {
    sqlite3 *db;
    sqlite3_stmt *begin, *get, *put, *commit, *rollback;
};

void *peers_sqlite_kv_open(const char *path) {
    struct peers_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return NULL;
    if (sqlite3_open(path, &kv->db) != SQLITE_OK) goto fail;
    sqlite3_busy_timeout(kv->db, 60000);
    if (sqlite3_exec(kv->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     "CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID;", NULL, NULL, NULL) != SQLITE_OK) goto fail;
    if (sqlite3_prepare_v2(kv->db, "BEGIN IMMEDIATE", -1, &kv->begin, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(kv->db, "SELECT value FROM kv WHERE key = ?", -1, &kv->get, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(kv->db, "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", -1, &kv->put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(kv->db, "COMMIT", -1, &kv->commit, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(kv->db, "ROLLBACK", -1, &kv->rollback, NULL) != SQLITE_OK) goto fail;
    return kv;
fail:
    peers_sqlite_kv_close(kv);
    return NULL;
}

void peers_sqlite_kv_close(void *handle) {
    struct peers_kv *kv = handle;
    sqlite3_finalize(kv->begin); sqlite3_finalize(kv->get); sqlite3_finalize(kv->put);
    sqlite3_finalize(kv->commit); sqlite3_finalize(kv->rollback);
    sqlite3_close(kv->db);
    free(kv);
}

static int step_reset(sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

int peers_sqlite_kv_tx(void *handle, const char *key_a, const char *key_b, uint8_t fill) {
    struct peers_kv *kv = handle;
    uint8_t value[64];
    memset(value, fill, sizeof value);
    if (step_reset(kv->begin)) return -1;
    const char *keys[2] = { key_a, key_b };
    for (int i = 0; i < 2; i++) {
        sqlite3_bind_text(kv->get, 1, keys[i], -1, SQLITE_STATIC);
        if (sqlite3_step(kv->get) == SQLITE_ROW) (void)sqlite3_column_blob(kv->get, 0);
        sqlite3_reset(kv->get);
    }
    for (int i = 0; i < 2; i++) {
        sqlite3_bind_text(kv->put, 1, keys[i], -1, SQLITE_STATIC);
        sqlite3_bind_blob(kv->put, 2, value, sizeof value, SQLITE_STATIC);
        if (step_reset(kv->put)) { step_reset(kv->rollback); return -1; }
    }
    return step_reset(kv->commit);
}

// The scale benchmark's peer: keys "pkg/I" with 100-byte values in the same kv table.
int peers_sqlite_kv_load(void *handle, int from, int to) {
    struct peers_kv *kv = handle;
    uint8_t value[100];
    char key[32];
    if (step_reset(kv->begin)) return -1;
    for (int i = from; i < to; i++) {
        memset(value, i & 0xff, sizeof value);
        snprintf(key, sizeof key, "pkg/%d", i);
        sqlite3_bind_text(kv->put, 1, key, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(kv->put, 2, value, sizeof value, SQLITE_STATIC);
        if (step_reset(kv->put)) { step_reset(kv->rollback); return -1; }
    }
    return step_reset(kv->commit);
}

int peers_sqlite_kv_get(void *handle, int i) {
    struct peers_kv *kv = handle;
    char key[32];
    snprintf(key, sizeof key, "pkg/%d", i);
    sqlite3_bind_text(kv->get, 1, key, -1, SQLITE_STATIC);
    int length = -1;
    if (sqlite3_step(kv->get) == SQLITE_ROW) {
        (void)sqlite3_column_blob(kv->get, 0);
        length = sqlite3_column_bytes(kv->get, 0);
    }
    sqlite3_reset(kv->get);
    return length;
}

int peers_sqlite_kv_set(void *handle, int i) {
    struct peers_kv *kv = handle;
    uint8_t value[100];
    char key[32];
    memset(value, 9, sizeof value);
    snprintf(key, sizeof key, "pkg/%d", i);
    if (step_reset(kv->begin)) return -1;
    sqlite3_bind_text(kv->put, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(kv->put, 2, value, sizeof value, SQLITE_STATIC);
    if (step_reset(kv->put)) { step_reset(kv->rollback); return -1; }
    return step_reset(kv->commit);
}

void *peers_pmemobj_create(const char *path) {
    PMEMobjpool *pop = pmemobj_create(path, "pmll-bench", 16 << 20, 0600);
    if (!pop) return NULL;
    PMEMoid root = pmemobj_root(pop, 4096);
    if (OID_IS_NULL(root)) { pmemobj_close(pop); return NULL; }
    return pop;
}

void peers_pmemobj_close(void *pop) { pmemobj_close((PMEMobjpool *)pop); }

int peers_pmemobj_tx(void *handle, uint8_t fill) {
    PMEMobjpool *pop = handle;
    PMEMoid root = pmemobj_root(pop, 4096);
    char *base = pmemobj_direct(root);
    int failed = 0;
    TX_BEGIN(pop) {
        pmemobj_tx_add_range(root, 0, 64);
        pmemobj_tx_add_range(root, 1024, 64);
        memset(base, fill, 64);
        memset(base + 1024, fill, 64);
    } TX_ONABORT {
        failed = 1;
    } TX_END
    return failed ? -1 : 0;
}

static uint64_t msyncs;
uint64_t peers_msync_count(void) { return __atomic_load_n(&msyncs, __ATOMIC_RELAXED); }

// Interposes libc's msync for the whole benchmark binary (libpmem calls it through the PLT).
int msync(void *addr, size_t length, int flags) {
    __atomic_fetch_add(&msyncs, 1, __ATOMIC_RELAXED);
    return (int)syscall(SYS_msync, addr, length, flags);
}
