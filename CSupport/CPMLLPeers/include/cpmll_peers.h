// Peers that the PMLL benchmarks measure against, in the same run, on the same files.
// Not part of the library.
#ifndef CPMLL_PEERS_H
#define CPMLL_PEERS_H
#include <stdint.h>
#include <stddef.h>

#pragma clang assume_nonnull begin

// glibc pthread mutex with PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST, placed in a
// MAP_SHARED file mapping. lock returns 0, or 1 when the previous owner died (EOWNERDEAD,
// already made consistent), or -errno.
size_t peers_robust_size(void);
int peers_robust_init(void *mutex);
int peers_robust_lock(void *mutex);
int peers_robust_unlock(void *mutex);

// glibc pthread_rwlock with PTHREAD_PROCESS_SHARED (default kind: readers preferred) in a
// MAP_SHARED mapping. 0 or -errno.
size_t peers_rwlock_size(void);
int peers_rwlock_init(void *rwlock);
int peers_rwlock_rdlock(void *rwlock);
int peers_rwlock_wrlock(void *rwlock);
int peers_rwlock_timedwrlock(void *rwlock, int64_t timeout_ns);
int peers_rwlock_unlock(void *rwlock);

// flock(2) with the given operation (LOCK_SH, LOCK_EX, LOCK_UN, | LOCK_NB). 0 or -errno.
int peers_flock(int fd, int operation);
int peers_lock_sh(void);
int peers_lock_ex(void);
int peers_lock_un(void);
int peers_lock_nb(void);

// flock(2) and fcntl OFD write lock + unlock on byte 0 of fd. 0 or -errno.
int peers_flock_pair(int fd);
int peers_ofd_pair(int fd);

// The physical floor: n iterations of CAS 0->1 + release store 0 on *word. Returns elapsed ns.
uint64_t peers_cas_pairs(uint32_t *word, uint64_t n);

// The practical alternative a CPM author would pick for a durable cross-process queue: a
// SQLite table in WAL mode with synchronous=FULL, one transaction per state change. Opens
// (creating the table), returns NULL on error.
void *_Nullable peers_sqlite_open(const char *path);
void peers_sqlite_close(void *db);
// One operation: insert it queued (commit), wait until it is the oldest unfinished one
// (polling), mark it running (commit), run nothing, mark it done (commit). 0 or -1.
int peers_sqlite_operation(void *db, int owner);

// A SQLite key-value table (WAL, synchronous=FULL) for the transaction benchmark: one
// transaction is BEGIN IMMEDIATE (the writer lock first, so it never conflicts), read two
// keys, write both with a 64-byte value, COMMIT. Statements are prepared once per handle.
void *_Nullable peers_sqlite_kv_open(const char *path);
void peers_sqlite_kv_close(void *kv);
int peers_sqlite_kv_tx(void *kv, const char *key_a, const char *key_b, uint8_t fill);
// Scale benchmark: load keys "pkg/from".."pkg/to-1" (100-byte values) in one transaction;
// get one (its length, or -1); set one in its own transaction. 0 or -1.
int peers_sqlite_kv_load(void *kv, int from, int to);
int peers_sqlite_kv_get(void *kv, int i);
int peers_sqlite_kv_set(void *kv, int i);

// libpmemobj (PMDK's transactional layer): a pool with a root object of 4 KiB, and one
// transaction that snapshots two 64-byte ranges (pmemobj_tx_add_range) and rewrites them.
void *_Nullable peers_pmemobj_create(const char *path);
void peers_pmemobj_close(void *pop);
int peers_pmemobj_tx(void *pop, uint8_t fill);

// The ideal write-ahead log (grouplog.c): one 256-byte record per commit, pwrite to a
// pre-written 64 MiB file, one fdatasync shared by every process with a record pending. reset
// prepares PATH and PATH.ctl before a row (0 or -errno); open attaches a process (NULL on
// error); commit returns once the record is durable (0 or -errno).
int peers_log_reset(const char *path);
void *_Nullable peers_log_open(const char *path);
void peers_log_close(void *log);
int peers_log_commit(void *log, const void *record, size_t length);
// fdatasync calls made by this process's log commits.
uint64_t peers_log_flush_count(void);
// What the flushes of every process since the last reset did: how many, the records they
// covered, and the time in the fdatasync and, before it, gathering the group (0 or -errno).
typedef struct { uint64_t flushes, commits, flush_ns, gather_ns; } peers_log_stats;
int peers_log_statistics(const char *path, peers_log_stats *out);

// msync calls made by this process (the benchmark binary interposes msync to count them).
uint64_t peers_msync_count(void);

// statfs(2) f_type of the filesystem holding path, 0 on error.
int64_t peers_filesystem_type(const char *path);

// Nanoseconds per inode allocation in dir right now: n O_TMPFILE opens, held, then closed.
// 0 on error.
uint64_t peers_inode_alloc_ns(const char *dir, int n);

// CPU time (user + system) this process has used, all threads, in nanoseconds.
uint64_t peers_process_cpu_ns(void);

#pragma clang assume_nonnull end
#endif
