/*
 * pmll.h — the C interface of PMLL, the Persistent Memory Lock Library.
 *
 * Names follow the PMLL hardening design used by CPM. Every function is safe to call from
 * any thread. Functions that can fail return a CPM_Result (or NULL / false) and leave the
 * reason in pmll_last_error() for the calling thread. Docs/C-API.md has the whole contract.
 *
 * Build: cc app.c $(pkg-config --cflags --libs pmll)
 */
#ifndef PMLL_H
#define PMLL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PMLL_VERSION_MAJOR 0
#define PMLL_VERSION_MINOR 8
#define PMLL_VERSION_PATCH 0

/* ---- Results --------------------------------------------------------------------------
 * 0–17 are CPM's CPM_Result values (include/cpm_types.h of CPM), 19 is CPM's lock timeout;
 * PMLL's own codes follow. A program that already includes CPM's cpm_types.h keeps CPM's
 * enum; the values are the same. */
#ifndef CPM_TYPES_H
typedef enum {
    CPM_RESULT_SUCCESS = 0,
    CPM_RESULT_ERROR_UNKNOWN = 1,
    CPM_RESULT_ERROR_INVALID_ARGS = 2,
    CPM_RESULT_ERROR_NOT_INITIALIZED = 3,
    CPM_RESULT_ERROR_ALREADY_INITIALIZED = 4,
    CPM_RESULT_ERROR_INITIALIZATION_FAILED = 5,
    CPM_RESULT_ERROR_TERMINATION_FAILED = 6,
    CPM_RESULT_ERROR_UNKNOWN_COMMAND = 7,
    CPM_RESULT_ERROR_COMMAND_FAILED = 8,
    CPM_RESULT_ERROR_MEMORY_ALLOCATION = 9,
    CPM_RESULT_ERROR_FILE_OPERATION = 10,
    CPM_RESULT_ERROR_NETWORK = 11,
    CPM_RESULT_ERROR_PACKAGE_PARSE = 12,
    CPM_RESULT_ERROR_DEPENDENCY_RESOLUTION = 13,
    CPM_RESULT_ERROR_SCRIPT_EXECUTION = 14,
    CPM_RESULT_ERROR_PMLL_INIT = 15,
    CPM_RESULT_ERROR_PROMISE_CREATION = 16,
    CPM_RESULT_ERROR_PMDK_OPERATION = 17
} CPM_Result;
#endif

/* The seed's short spellings. */
#define CPM_RESULT_INVALID_ARGS CPM_RESULT_ERROR_INVALID_ARGS
#define CPM_RESULT_PMDK_OPERATION CPM_RESULT_ERROR_PMDK_OPERATION

/* Codes past CPM's enum, typed CPM_Result so that comparisons with results stay warning-free. */
#define PMLL_RESULT_CODE(n) ((CPM_Result)(n))
#define CPM_RESULT_LOCK_TIMEOUT PMLL_RESULT_CODE(19)         /* busy (try), or the timeout/deadline passed */
#ifndef CPM_TYPES_H
#define CPM_RESULT_ERROR_LOCK_TIMEOUT CPM_RESULT_LOCK_TIMEOUT
#endif
#define PMLL_RESULT_NOT_FOUND PMLL_RESULT_CODE(32)           /* no such key or pool */
#define PMLL_RESULT_OWNER_DIED PMLL_RESULT_CODE(33)          /* reserved: acquires report a death as SUCCESS + pmll_lock_previous_owner_died */
#define PMLL_RESULT_HIERARCHY_VIOLATION PMLL_RESULT_CODE(34) /* a leveled lock asked out of order */
#define PMLL_RESULT_CANCELLED PMLL_RESULT_CODE(35)
#define PMLL_RESULT_POOL_CORRUPT PMLL_RESULT_CODE(36)        /* corrupt, foreign or incompatible pool file, damaged record */
#define PMLL_RESULT_POOL_FULL PMLL_RESULT_CODE(37)           /* a table or the store is full, or the file system is */
#define PMLL_RESULT_PERMISSION PMLL_RESULT_CODE(38)
#define PMLL_RESULT_NOT_SUPPORTED PMLL_RESULT_CODE(39)
#define PMLL_RESULT_CONFLICT PMLL_RESULT_CODE(40)            /* a serializable transaction read something changed since: run it again */
#define PMLL_RESULT_NOT_HELD PMLL_RESULT_CODE(41)            /* release of a lock this PMLL_Lock does not hold */
#define PMLL_RESULT_TOO_LARGE PMLL_RESULT_CODE(42)           /* key or value too long, or a buffer too small */
#define PMLL_RESULT_SYSTEM PMLL_RESULT_CODE(43)              /* a system call failed (pmll_last_error names it) */

/* The calling thread's last failure, as the one line the pmll command prints
 * ("pmll: ..."), or "" if none. Valid until this thread's next PMLL call. */
const char* pmll_last_error(void);

/* "0.8.0" */
const char* pmll_get_version(void);

/* ---- Pools ----------------------------------------------------------------------------- */
typedef struct PMEMContextHandle PMEMContextHandle;

/* Opens the pool at `path` (NULL: $PMLL_POOL, else the per-user default the pmll command
 * uses), creating it with `size` bytes (0: the default, 16 MiB) if it does not exist and
 * `create_if_missing`. An existing pool is opened as it is. Each call is one participant
 * of the pool, with its own owner identity: a forked child must open its own. NULL on
 * failure (pmll_last_error says why). */
PMEMContextHandle* pmem_context_create(const char* path, size_t size, bool create_if_missing);
/* Opens an existing pool; NULL if there is none. */
PMEMContextHandle* pmem_context_open(const char* path);
/* Leaves the pool. Every lock this participant still holds is released and marked as after
 * an owner death; locks and transactions of this context must not be used afterwards. */
void pmem_context_close(PMEMContextHandle* ctx);
/* The pool file's path (valid until close). */
const char* pmem_context_path(const PMEMContextHandle* ctx);
/* Full consistency check of the pool (what `pmll check` does): SUCCESS, or
 * PMLL_RESULT_POOL_CORRUPT with the first problem in pmll_last_error(). */
CPM_Result pmem_context_check(PMEMContextHandle* ctx);

typedef struct {
    uint64_t size_bytes;
    uint32_t processes, process_capacity;   /* live participants */
    uint32_t locks, lock_capacity;          /* user locks in the table */
    uint32_t queues;
    uint32_t keys_used, key_capacity;       /* state store (0 if the pool has none) */
    uint64_t blocks_used, block_count;
    uint64_t commits, conflicts;            /* transactions since the pool was created */
    uint32_t persistent_memory;             /* 1 on real persistent memory (DAX) */
} PMLL_PoolStatus;
/* A snapshot of the pool, what `pmll status` summarises. */
CPM_Result pmem_context_status(PMEMContextHandle* ctx, PMLL_PoolStatus* status);

/* One process-wide default pool, as CPM's start-up expects: pmll_init opens `pool_path`
 * (NULL: the pmll command's default) with `pool_size`; calling it again is SUCCESS.
 * pmll_init_global_system() is pmll_init(NULL, 0) returning true on success. The shutdown
 * calls close it. */
CPM_Result pmll_init(const char* pool_path, size_t pool_size);
void pmll_shutdown(void);
bool pmll_init_global_system(void);
void pmll_shutdown_global_system(void);
/* The default pool (NULL before pmll_init). Functions taking a context accept NULL for it. */
PMEMContextHandle* pmll_default_context(void);

/* ---- Locks ----------------------------------------------------------------------------- */
/* Caller-allocated, as in `PMLL_Lock cache_lock;`. Opaque; fixed size for this major
 * version. */
typedef struct PMLL_Lock {
    uint64_t opaque[12];
} PMLL_Lock;

/* Hierarchy levels (the design's order). PMLL_LEVEL_NONE: not hierarchy-checked. */
typedef enum {
    PMLL_LEVEL_NONE = 0,
    PMLL_LEVEL_REGISTRY = 1,
    PMLL_LEVEL_PACKAGE = 2,
    PMLL_LEVEL_FILESYSTEM = 3,
    PMLL_LEVEL_NETWORK = 4
} PMLL_LockLevel;

/* Binds `lock` to the pool lock named `resource_id` (1–255 bytes), creating it if the pool
 * has none (at the package level, as `pmll lock` does). `persistent` is accepted for the
 * design's signature: every PMLL lock lives in the pool, shared by every process. NULL ctx:
 * the default pool. Locks from pmll_lock_init are not hierarchy-checked. */
CPM_Result pmll_lock_init(PMLL_Lock* lock, const char* resource_id, bool persistent, PMEMContextHandle* ctx);
/* As pmll_lock_init, with a hierarchy level: acquiring it while this thread holds a leveled
 * lock of the same or a higher level fails with PMLL_RESULT_HIERARCHY_VIOLATION. The lock
 * must exist at that level or not at all. */
CPM_Result pmll_lock_init_level(PMLL_Lock* lock, const char* resource_id, PMLL_LockLevel level, PMEMContextHandle* ctx);

/* Waits at most `timeout_ms` (0: no limit). SUCCESS when taken, including after the previous
 * owner died (then pmll_lock_previous_owner_died() is true: repair what it protects). */
CPM_Result pmll_lock_acquire(PMLL_Lock* lock, uint32_t timeout_ms);
/* Waits until the absolute CLOCK_MONOTONIC time `deadline` (a past deadline still takes a
 * free lock or a dead owner's). */
CPM_Result pmll_lock_acquire_until(PMLL_Lock* lock, const struct timespec* deadline);
/* Never waits: CPM_RESULT_LOCK_TIMEOUT when another holder has it. */
CPM_Result pmll_lock_try_acquire(PMLL_Lock* lock);
/* After a successful acquire: whether the previous holder died (or released inconsistent). */
bool pmll_lock_previous_owner_died(const PMLL_Lock* lock);

typedef struct {
    int32_t pid;                 /* the dead holder's pid, in its own namespace (0 if unknown) */
    uint32_t released_inconsistent; /* 1: it released with pmll_lock_release_inconsistent, not died */
    char command[64];            /* its command name */
    int64_t held_since_ns;       /* when it took the lock (ns since 1970, coarse) */
    int64_t detected_ns;         /* when its death was found (ns since 1970) */
} PMLL_OwnerDeath;
/* While holding after a death: the details. false if the previous owner did not die. */
bool pmll_lock_owner_death(const PMLL_Lock* lock, PMLL_OwnerDeath* death);

/* Releases. PMLL_RESULT_NOT_HELD if this PMLL_Lock does not hold it. */
CPM_Result pmll_lock_release(PMLL_Lock* lock);
/* Releases and tells the next holder the critical section did not complete. */
CPM_Result pmll_lock_release_inconsistent(PMLL_Lock* lock);
/* Forgets the binding (the pool's lock stays). A held lock is released first. */
void pmll_lock_destroy(PMLL_Lock* lock);

typedef struct {
    uint64_t acquisitions;
    uint64_t contended;
    uint64_t owner_deaths;
    uint64_t timeouts;
    uint64_t total_wait_ns;
    uint64_t max_wait_ns;
    int32_t holder_pid;          /* 0 when free */
    uint32_t waiters;
} PMLL_LockStats;
/* The lock's statistics, counted by every process of the pool. */
CPM_Result pmll_lock_get_stats(const PMLL_Lock* lock, PMLL_LockStats* stats);

/* ---- Transactions ---------------------------------------------------------------------
 * Serializable transactions over the pool's key-value state store (keys 1–255 bytes, no NUL,
 * not starting with "pmll:"; values up to 64 MiB). Writes are buffered and seen by the
 * transaction's own reads; commit writes them all atomically (crash- and power-safe) or
 * returns PMLL_RESULT_CONFLICT, after which the caller runs its transaction again. */
typedef struct PMLL_Transaction PMLL_Transaction;

PMLL_Transaction* pmll_transaction_begin(PMEMContextHandle* ctx);
CPM_Result pmll_tx_set(PMLL_Transaction* tx, const char* key, const void* value, size_t length);
/* Copies the value into `buffer` (up to `capacity` bytes) and stores its full length in
 * `*length`; PMLL_RESULT_TOO_LARGE if it did not fit (then *length says how much is needed),
 * PMLL_RESULT_NOT_FOUND if the key has no value. */
CPM_Result pmll_tx_get(PMLL_Transaction* tx, const char* key, void* buffer, size_t capacity, size_t* length);
CPM_Result pmll_tx_delete(PMLL_Transaction* tx, const char* key);
/* Both end the transaction and free it, whatever they return. */
CPM_Result pmll_transaction_commit(PMLL_Transaction* tx);
CPM_Result pmll_transaction_abort(PMLL_Transaction* tx);

/* Named objects of fixed size in the pool, written only through transactions (the design's
 * `pmem_write(tx, &package_state, new_state)`; libpmemobj's root object). The pointer stays
 * valid while the context is open; every process that opens the object sees the same bytes.
 * Created zero-filled if missing; NULL if it exists with another size (or on any failure).
 * Objects hold up to 64 MiB minus the name; a transaction may change any number of keys (its
 * undo log grows with it). */
void* pmll_object(PMEMContextHandle* ctx, const char* name, size_t size);
/* Writes `size` bytes of `src` to `dst` (inside an object of the transaction's pool) when the
 * transaction commits: atomically with its other writes, rolled back by a crash or power loss
 * during the commit, discarded by an abort. Until then `dst` shows the committed bytes.
 * Writes are atomic but not isolated from lock-free readers: guard an object with a lock as
 * you would a libpmemobj object. */
CPM_Result pmem_write(PMLL_Transaction* tx, void* dst, const void* src, size_t size);

/* ---- Queues and promises ---------------------------------------------------------------
 * A hardened queue serialises the operations of every process on one resource, in FIFO
 * order, records each one in the pool, retries failures with backoff, and lets recovery find
 * what a dead process left behind. Operations run on the queue handle's own thread, one after
 * another in the order they were submitted through it; the returned promise settles when the
 * operation has run (or failed for good). */
#if !defined(CPM_PROMISE_H)
typedef struct Promise Promise;
typedef struct PMLL_HardenedResourceQueue PMLL_HardenedResourceQueue;
typedef void* PromiseValue;
typedef PromiseValue (*on_fulfilled_callback)(PromiseValue value, void* user_data);
typedef PromiseValue (*on_rejected_callback)(PromiseValue reason, void* user_data);
#endif
#if !defined(CPM_PROMISE_H) && !(defined(CPM_TYPES_H) && defined(CPM_VERSION_STRING))
typedef enum {
    PROMISE_PENDING,
    PROMISE_FULFILLED,
    PROMISE_REJECTED
} PromiseState;
#endif

/* The queue `resource_id` (1–244 bytes) of the pool (NULL ctx: the default pool), created if
 * missing. `persistent` queues keep their records durable across crashes and power loss; it
 * must match the queue's existing kind. NULL on failure. */
PMLL_HardenedResourceQueue* pmll_queue_create(const char* resource_id, bool persistent, PMEMContextHandle* ctx);
/* Retries after a failed attempt (default 3, from 10 ms doubling to at most 1 s) and how long
 * an operation may wait for its turn (default 30000 ms; 0: no limit). */
CPM_Result pmll_queue_set_retry(PMLL_HardenedResourceQueue* queue, uint32_t max_retries, uint32_t base_delay_ms);
CPM_Result pmll_queue_set_timeout(PMLL_HardenedResourceQueue* queue, uint32_t timeout_ms);
/* Root directory for pmll_execute_batch_operation's relative paths (default: the working
 * directory when the queue was created). */
CPM_Result pmll_queue_set_batch_root(PMLL_HardenedResourceQueue* queue, const char* root);

/* Runs `op(previous, user_data)` in this process as the queue's next operation, after every
 * operation submitted before it in any process; `previous` is the value of this handle's
 * previous operation (NULL for the first). It fails by calling pmll_operation_fail before it
 * returns: then it is retried per the queue's policy, and after the last failure
 * `error_fn(reason, user_data)` runs (if given) and the promise is rejected with its result
 * (or with the reason). NULL if the operation could not be submitted. */
Promise* pmll_execute_hardened_operation(PMLL_HardenedResourceQueue* queue, on_fulfilled_callback op,
                                         on_rejected_callback error_fn, void* user_data);
/* Inside an operation: mark this attempt failed, with a reason (copied). */
void pmll_operation_fail(const char* reason);

typedef enum {
    WRITE_FILE,      /* create or overwrite `path` with `data` */
    DELETE_FILE,     /* remove `path` (a missing file is an error) */
    REPLACE_FILE,    /* atomically replace an existing `path` with `data` */
    CREATE_DIRECTORY /* `path` and any missing parents */
} BatchOperationType;

typedef struct {
    BatchOperationType type;
    const char* path;    /* relative to the queue's batch root; never leaves it */
    const char* data;    /* WRITE_FILE/REPLACE_FILE: the content */
    size_t size;         /* bytes of `data`; 0: `data` is a NUL-terminated string */
} BatchOperation;
/* Applies the `count` operations as one atomic file batch, as an operation of the queue: all
 * or nothing, across crashes (recovery rolls a dead process's batch back). The promise is
 * fulfilled with NULL, or rejected with the reason ("pmll: ..."). */
Promise* pmll_execute_batch_operation(PMLL_HardenedResourceQueue* queue, const BatchOperation* batch, size_t count);

PromiseState promise_state(const Promise* promise);
/* The value of a fulfilled promise or the reason of a rejected one (NULL while pending).
 * Strings the library made stay valid until promise_free. */
PromiseValue promise_value(const Promise* promise);
/* Waits until the promise settles, at most `timeout_ms` (0: no limit). true once settled. */
bool promise_wait(Promise* promise, uint32_t timeout_ms);
/* A promise for the result of `on_fulfilled(value)` or `on_rejected(reason)` (a NULL callback
 * passes the value or reason through). The callback runs on the thread that settles
 * `promise`, or at once in this call if it has settled. */
Promise* promise_then(Promise* promise, on_fulfilled_callback on_fulfilled, on_rejected_callback on_rejected, void* user_data);
/* Drops the caller's reference (a pending operation still runs). */
void promise_free(Promise* promise);

/* Operations of every process on this queue, as the pool counts them (an operation retried
 * three times counts once). Any pointer may be NULL. */
void pmll_queue_get_stats(PMLL_HardenedResourceQueue* queue, uint64_t* completed, uint64_t* failed, uint64_t* pending);
typedef struct {
    uint64_t completed, failed, retried, abandoned, recovered, pending;
    uint64_t mean_wait_ns, max_wait_ns, mean_run_ns, max_run_ns;
} PMLL_QueueStats;
CPM_Result pmll_queue_get_full_stats(PMLL_HardenedResourceQueue* queue, PMLL_QueueStats* stats);

/* What recovery hands the recovery callback: an operation a dead process left unfinished. */
typedef struct {
    const char* queue;
    uint64_t ticket;
    int32_t owner_pid;
    uint32_t attempts;
    const char* last_error;
} PMLL_AbandonedOperation;
/* Returns true when it has repaired or redone the operation (it is then marked recovered);
 * must be idempotent: recovery may itself be interrupted and run again. */
typedef bool (*pmll_recovery_callback)(const PMLL_AbandonedOperation* operation, void* user_data);
CPM_Result pmll_queue_set_recovery_handler(PMLL_HardenedResourceQueue* queue, pmll_recovery_callback handler, void* user_data);
/* Recovers what dead processes left in the pool: their file batches are rolled back, and
 * their abandoned C operations handed to this queue's recovery callback (an operation with no
 * callback stays abandoned, for a process that has one). NULL ctx: the queue's pool. */
CPM_Result pmll_queue_recover_operations(PMLL_HardenedResourceQueue* queue, PMEMContextHandle* ctx);
/* Waits for this handle's submitted operations to finish, then frees it. */
void pmll_queue_free(PMLL_HardenedResourceQueue* queue);
/* The persistent queue "files" of the default pool (pmll_init first), one handle per process:
 * do not free it. */
PMLL_HardenedResourceQueue* pmll_get_default_file_queue(void);

#ifdef __cplusplus
}
#endif

#endif /* PMLL_H */
