// CPMLL: the C helper under the PMLL Swift library.
//
// Two jobs only:
//  1. The binary layout of everything that lives in the shared pool file, with
//     _Static_asserts, so that C and Swift (and a future C ABI) agree byte for byte.
//  2. Thin, prefixed wrappers over kernel and library calls that Swift cannot
//     reach cleanly (futex, OFD locks, libpmem, GNU-only clock ids). Each wrapper
//     returns 0 or a positive result on success and -errno on failure; Swift turns
//     that into a typed error in one place (Sources/PMLLCore/System/SystemCall.swift).
//
// GNU-only names (_GNU_SOURCE, F_OFD_*, FUTEX_*) stay in the .c files. Every function
// declared here has hidden visibility: they are the library's internals, linked into it, and
// a shared library of PMLL exports only its public C API, never these.
#ifndef CPMLL_H
#define CPMLL_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <spawn.h>

#ifdef __cplusplus
extern "C" {
#endif

#pragma clang assume_nonnull begin
#pragma GCC visibility push(hidden)

// MARK: - Pool file layout (format version 1). All integers little-endian (x86-64, aarch64).

#define PMLL_MAGIC "PMLLPOOL"
#define PMLL_FORMAT_VERSION 1u
#define PMLL_HEADER_SIZE 4096u
#define PMLL_HEADER_CHECKED_BYTES 504u   // bytes [0, 504) are covered by header_checksum
#define PMLL_NAME_MAX 255u

#define PMLL_POOL_FLAG_GROUP_SHARED 0x1u
// Growth limit of pools whose header records none (created before pools grew).
static const uint64_t PMLL_SIZE_LIMIT_DEFAULT = 64ull << 30;

// Byte offsets, far beyond any pool's end, on which OFD locks are taken. A byte-range
// lock may lie past EOF; these never touch data and never conflict with mmap.
static const int64_t PMLL_LOCKBYTE_INIT     = 0x10000000000;        // exclusive while a process attaches
static const int64_t PMLL_LOCKBYTE_SESSION  = 0x10000000000 + 1;    // shared by every attached process
static const int64_t PMLL_LOCKBYTE_TABLE    = 0x10000000000 + 2;    // exclusive while a lock entry is created
static const int64_t PMLL_LOCKBYTE_AUDIT    = 0x10000000000 + 3;    // exclusive while the audit ring is drained to files
static const int64_t PMLL_LOCKBYTE_LIVENESS = 0x10000000000 + 4096; // + slot index: held by the slot's process

typedef struct pmll_section {
    uint64_t offset;
    uint64_t size;
} pmll_section_t;

// Page 0 of the pool. Bytes [0, 504) are written once at creation and checksummed;
// the rest of the page holds volatile, per-boot bookkeeping.
typedef struct pmll_header {
    char magic[8];                 // "PMLLPOOL"
    uint32_t format_version;       // PMLL_FORMAT_VERSION
    uint32_t header_size;          // PMLL_HEADER_SIZE
    uint64_t pool_size;            // total file size; opening checks the file still has it
    uint64_t created_at_ns;        // CLOCK_REALTIME at creation
    uint32_t creator_uid;
    uint32_t flags;                // PMLL_POOL_FLAG_*
    uint32_t process_capacity;     // slots in the process table
    uint32_t lock_capacity;        // entries in the lock table
    pmll_section_t process_table;
    pmll_section_t lock_table;
    pmll_section_t heap;           // reserved for the state store and transaction logs
    pmll_section_t queue_table;    // queue heads, then each queue's record ring
    uint32_t queue_capacity;       // queues
    uint32_t queue_ring;           // records per queue (the retention)
    uint64_t layout_signature;     // pmll_layout_signature() of the build that created the pool (0: before signatures)
    uint32_t byte_order;           // PMLL_BYTE_ORDER_MARK as the creator stored it
    uint32_t reserved_checked;
    pmll_section_t audit_ring;     // the audit ring (size 0: created before audit logging, or without it)
    uint64_t size_limit;           // the file may grow to this many bytes (0: created before growth; PMLL_SIZE_LIMIT_DEFAULT)
    uint8_t reserved[344];
    uint64_t header_checksum;      // CRC32C of bytes [0, 504)

    // --- volatile part (not checksummed) ---
    char boot_id[40];              // /proc/sys/kernel/random/boot_id of the last reset
    uint64_t volatile_resets;      // how many times volatile state was reset
    uint32_t last_reset_reason;    // PMLL_RESET_*
    uint32_t policy_epoch;         // odd while the access policy changes, next even value after (readers re-load it)
    uint64_t quiet_directory_mtime_ns; // the pool directory's mtime when a scan for creation temporaries left none to look at again (0: scan)
    uint64_t unreplaced_memo;      // fingerprint of the pool directory (device, inode, mtime) when no process was found mapping a former file at this path (0: look)
    uint64_t unreplaced_file_memo; // fingerprint of the pool file itself (device, inode, ctime) then (0: look)
    uint8_t padding[PMLL_HEADER_SIZE - 512 - 40 - 40];
} pmll_header_t;

#define PMLL_RESET_NONE 0u
#define PMLL_RESET_CREATED 1u
#define PMLL_RESET_LAST_PROCESS_GONE 2u
#define PMLL_RESET_REBOOT 3u

_Static_assert(sizeof(pmll_header_t) == PMLL_HEADER_SIZE, "header is one page");
_Static_assert(offsetof(pmll_header_t, header_checksum) == PMLL_HEADER_CHECKED_BYTES, "checksum follows checked bytes");
_Static_assert(offsetof(pmll_header_t, process_table) == 48, "section table offset");
_Static_assert(offsetof(pmll_header_t, queue_table) == 96, "queue section offset");
_Static_assert(offsetof(pmll_header_t, boot_id) == 512, "volatile part starts at 512");
_Static_assert(offsetof(pmll_header_t, layout_signature) == 120, "layout signature offset");
_Static_assert(offsetof(pmll_header_t, byte_order) == 128, "byte order offset");
_Static_assert(offsetof(pmll_header_t, audit_ring) == 136, "audit ring section in the former reserved bytes");
_Static_assert(offsetof(pmll_header_t, size_limit) == 152, "size limit in the former reserved bytes");
_Static_assert(offsetof(pmll_header_t, policy_epoch) == 564, "policy epoch in the former reserved volatile word");
_Static_assert(offsetof(pmll_header_t, quiet_directory_mtime_ns) == 568, "directory mtime memo in the volatile padding");
_Static_assert(offsetof(pmll_header_t, unreplaced_memo) == 576, "former-file memo in the volatile padding");
_Static_assert(offsetof(pmll_header_t, unreplaced_file_memo) == 584, "former-file memo of the file in the volatile padding");

// Written natively at creation: read back as 0x04030201, the pool comes from a machine of the
// other byte order.
#define PMLL_BYTE_ORDER_MARK 0x01020304u
// A digest of the format version and of the size and field offsets of every struct that
// lives in the pool file, as this build lays them out (the idea of LMDB's MDB_LOCK_FORMAT).
// A pool whose header records another signature was written by an incompatible build and is
// refused, never reinterpreted.
uint64_t pmll_layout_signature(void);
// The signature of a pool whose state store is of `store_version`: what a build creating that
// version wrote (version 1: every build before 2026-12-05). 0 for a version this build does not know.
uint64_t pmll_layout_signature_of_store(uint32_t store_version);

// One slot per attached process. Entirely volatile: reset when no process has the pool open.
#define PMLL_WAIT_LEDGER 16u
#define PMLL_READ_LEDGER 1u
#define PMLL_LEDGER_READ 0x80000000u
#define PMLL_LEDGER_COUNT_BITS 10u
#define PMLL_LEDGER_COUNT_MASK 0x3FFu
// A word that one biased hold owns alone (count field all ones: one hold); its thread gives
// it back with a plain store. Shared words count up to PMLL_LEDGER_OWNED - 1 holds. Only the
// last PMLL_LEDGER_OWNABLE words are owned, so the others stay for shared words.
#define PMLL_LEDGER_OWNED PMLL_LEDGER_COUNT_MASK
#define PMLL_LEDGER_OWNABLE 8u
#define PMLL_SLOT_FREE 0u
#define PMLL_SLOT_ACTIVE 1u

typedef struct pmll_process_slot {
    uint32_t state;                // PMLL_SLOT_*
    uint32_t generation;           // bumped on every registration; part of owner tokens
    int32_t pid;                   // as seen in the registering process's PID namespace
    uint32_t uid;
    uint64_t start_time;           // /proc/self/stat field 22 (clock ticks since boot)
    uint64_t registered_at_ns;     // CLOCK_REALTIME
    char comm[16];                 // NUL-padded command name
    uint32_t waiting_on[PMLL_WAIT_LEDGER]; // lock index + 1 per waiting thread, 0 = unused
    // The reader ledger: PMLL_LEDGER_READ | (lock index + 1) << PMLL_LEDGER_COUNT_BITS | holds,
    // one word per lock this process holds shared (its threads share it). Written only by the
    // slot's process; writers sum it over live processes to discount the holds of dead readers.
    // Shared holds spill into free waiting_on words when this one is in use.
    uint32_t reading[PMLL_READ_LEDGER];
    // Exit word: the TID of this process's exit-watch thread, whose robust-futex list holds
    // `robust_next`; the kernel marks the word FUTEX_OWNER_DIED and wakes a waiter at the very
    // start of that thread's exit (see deathwatch.c). 0 = no watch.
    uint32_t exit_word;
    uint64_t robust_next;          // the robust list node (a pointer of the slot's own process)
} pmll_process_slot_t;

_Static_assert(sizeof(pmll_process_slot_t) == 128, "process slot is two cache lines");
_Static_assert(offsetof(pmll_process_slot_t, waiting_on) == 48, "wait ledger offset");
_Static_assert(PMLL_READ_LEDGER + PMLL_WAIT_LEDGER <= 32, "a ledger word index fits the 5 bits SharedScope keeps it in");
_Static_assert(PMLL_LEDGER_OWNABLE < PMLL_WAIT_LEDGER, "owned words are wait-ledger words, and not all of them");
_Static_assert(offsetof(pmll_process_slot_t, reading) == 112, "read ledger in the former reserved bytes");
_Static_assert(offsetof(pmll_process_slot_t, exit_word) == 116 && offsetof(pmll_process_slot_t, robust_next) == 120, "exit watch");

// Lock word (the futex word). Owner token = generation << 10 | slot, 0 = free.
#define PMLL_OWNER_MASK       0x00FFFFFFu
#define PMLL_SLOT_BITS        10u
#define PMLL_MAX_PROCESSES    1024u
#define PMLL_MAX_GENERATION   16383u   // PMLL_OWNER_MASK >> PMLL_SLOT_BITS
#define PMLL_WORD_EXIT_RELEASES 0x04000000u  // the holder exec'd (`pmll flock -F`): its exit is its release, not a death
#define PMLL_WORD_READERS_WAITING 0x08000000u  // shared waiters sleep on the word: a release wakes all
#define PMLL_WORD_HANDED      0x10000000u  // owner was handed the lock on release and has not claimed it yet
#define PMLL_WORD_DRAINING    0x20000000u  // owner waits for shared holders to leave; its critical section has not begun
// An owner whose death is not an unfinished critical section.
static const uint32_t PMLL_WORD_NO_DEATH = PMLL_WORD_HANDED | PMLL_WORD_DRAINING | PMLL_WORD_EXIT_RELEASES;
#define PMLL_WORD_DIED        0x40000000u  // a holder's critical section did not complete
#define PMLL_WORD_WAITERS     0x80000000u  // somebody may be sleeping on the word

#define PMLL_ENTRY_EMPTY 0u
#define PMLL_ENTRY_READY 2u

#define PMLL_READERS_COUNT 0x00FFFFFFull
#define PMLL_READERS_DRAIN 0x80000000ull
// Reader bias (ReaderBias.swift): shared holders stay out of the count and are found in the
// process ledgers instead, so that they write no shared cache line. Turned on by a counted
// shared holder, off by a writer (ReaderBias.swift, Docs/LockProtocol.md "Reader bias").
#define PMLL_READERS_BIASED 0x40000000ull
// Set with bias_inhibit_until by a writer that revoked the bias: counted holders look at the
// clock (every 16th) before turning it back on; without it they turn it on at once.
#define PMLL_READERS_INHIBITED 0x20000000ull
#define PMLL_READERS_ONE_ACQUISITION 0x100000000ull

// Statistics of shared holds and of writers waiting for them (all written atomically).
typedef struct pmll_shared_stats {
    uint64_t acquisition_wraps;    // times the high half of `readers` wrapped
    uint64_t contended;            // shared acquisitions that waited
    uint64_t total_wait_ns;
    uint64_t max_wait_ns;
    uint64_t reader_deaths;        // shared holds of dead processes discounted by a writer
    uint64_t drains;               // exclusive acquisitions that waited for shared holders to leave
    uint64_t drain_total_ns;
    uint64_t drain_max_ns;
} pmll_shared_stats_t;

_Static_assert(sizeof(pmll_shared_stats_t) == 64, "shared statistics fill the former reserved bytes");

// One named lock. The word, handoff target and stats are volatile; state, level,
// name and name checksum are persistent.
typedef struct pmll_lock_entry {
    // Cache line 1: everything an acquisition touches, so that handing the lock from one
    // process to another moves one cache line, as a bare futex word would.
    uint32_t word;                 // futex word, see PMLL_WORD_*
    uint32_t handoff_target;       // owner token of the starving waiter, 0 = none
    uint32_t state;                // PMLL_ENTRY_* (persistent)
    uint32_t level;                // 1 registry, 2 package, 3 filesystem, 4 network (persistent)
    uint64_t acquisitions;         // written by the holder only; also the epoch of the current hold
    uint64_t contended;
    uint64_t total_wait_ns;
    uint64_t max_wait_ns;
    uint32_t name_length;          // persistent
    uint32_t entry_checksum;       // CRC32C over level, name_length, name (persistent)
    // Shared holds: count (PMLL_READERS_COUNT), DRAIN flag (a writer sleeps on the low half
    // waiting for the count to reach 0), and shared acquisitions modulo 2^32 in the high half.
    uint64_t readers;

    // Cache line 2: written off the uncontended path.
    uint64_t held_since_ns;        // CLOCK_REALTIME at which hold number held_epoch began (or was first seen)
    uint64_t held_epoch;           // value of acquisitions that held_since_ns belongs to
    uint64_t timeouts;             // atomic: written by waiters
    uint64_t owner_deaths;
    uint64_t handoffs;             // times a release handed the lock to a starving waiter
    uint64_t handoffs_unclaimed;   // handoffs taken by another waiter because their target did not claim them
    uint64_t bias_inhibit_until;   // CLOCK_MONOTONIC ns before which reader bias stays off (volatile; former reserved bytes)
    // Additions to the high half of `readers` that were not shared acquisitions (a waiting
    // reader's entries, a wait that failed). Counted here because that half must never go
    // down while a writer owns the word: every entry changes `readers` for good, so that a
    // writer's CAS of a value it loaded before its scan fails if anyone entered since (the
    // value cannot come back). Former reserved bytes (zero in older pools).
    uint64_t shared_retries;

    // Cache line 3: the most recent owner death.
    int32_t dead_pid;
    uint32_t dead_token;
    uint64_t dead_since_ns;        // when the dead owner had taken the lock
    uint64_t dead_detected_ns;     // when the death was detected
    char dead_comm[16];
    uint32_t dead_cause;           // 0 process died, 1 released inconsistent
    uint8_t reserved2[20];

    char name[256];                // NUL-terminated, name_length bytes of UTF-8
    pmll_shared_stats_t shared;    // (the former reserved bytes)
} pmll_lock_entry_t;

_Static_assert(sizeof(pmll_lock_entry_t) == 512, "lock entry is 512 bytes");
_Static_assert(offsetof(pmll_lock_entry_t, acquisitions) < 64 && offsetof(pmll_lock_entry_t, entry_checksum) < 64, "hot fields share the word's cache line");
_Static_assert(offsetof(pmll_lock_entry_t, held_since_ns) == 64, "cold fields on line 2");
_Static_assert(offsetof(pmll_lock_entry_t, dead_pid) == 128, "death record offset");
_Static_assert(offsetof(pmll_lock_entry_t, name) == 192, "name offset");
_Static_assert(offsetof(pmll_lock_entry_t, readers) == 56, "reader count shares the word's cache line");
_Static_assert(offsetof(pmll_lock_entry_t, bias_inhibit_until) == 112, "reader bias inhibition in the former reserved bytes");
_Static_assert(offsetof(pmll_lock_entry_t, shared_retries) == 120, "shared retries in the former reserved bytes");
_Static_assert(offsetof(pmll_lock_entry_t, shared) == 448, "shared statistics at the former reserved3");
_Static_assert(PMLL_MAX_PROCESSES == 1u << PMLL_SLOT_BITS, "slot bits");
_Static_assert(PMLL_MAX_GENERATION == PMLL_OWNER_MASK >> PMLL_SLOT_BITS, "generation bits");

// MARK: - Hardened queues

#define PMLL_KIND_MAX 63u
#define PMLL_PAYLOAD_MAX 1024u
#define PMLL_ERROR_MAX 63u
#define PMLL_QUEUE_FLAG_PERSISTENT 0x1u

#define PMLL_RECORD_FREE 0u
#define PMLL_RECORD_QUEUED 1u
#define PMLL_RECORD_RUNNING 2u
#define PMLL_RECORD_SUCCEEDED 3u
#define PMLL_RECORD_FAILED 4u
#define PMLL_RECORD_ABANDONED 5u
#define PMLL_RECORD_VOID 6u       // a ticket whose submitter died before writing its record

#define PMLL_HISTOGRAM_BUCKETS 24u   // bucket i counts latencies in [2^i, 2^(i+1)) microseconds
#define PMLL_QUEUE_TURN_WORDS 16u

// One queue. Tickets are handed out under the queue's submit lock (a robust lock entry in
// the lock table, so a submitter that dies mid-submit is detected and repaired); the ticket
// equal to `serving` may run; finishing it advances `serving` and bumps the futex word.
typedef struct pmll_queue_head {
    uint32_t state;                // PMLL_ENTRY_* (persistent)
    uint32_t flags;                // PMLL_QUEUE_FLAG_* (persistent)
    uint32_t serving_word;         // futex word: changes whenever `serving` advances
    uint32_t submit_lock;          // lock-table index of the submit lock (persistent)
    uint64_t next_ticket;          // next ticket to hand out (under the submit lock; persisted with records)
    uint64_t serving;              // the ticket whose turn it is
    uint32_t name_length;          // persistent
    uint32_t checksum;             // CRC32C over flags, submit_lock, name_length, name (persistent)
    uint8_t reserved0[24];

    uint64_t completed;
    uint64_t failed;
    uint64_t retried;
    uint64_t abandoned;
    uint64_t recovered;
    uint64_t total_wait_ns;
    uint64_t total_run_ns;
    uint64_t max_wait_ns;
    uint64_t max_run_ns;
    // Group commit (msync-backed pools): writers count themselves in; a flush that starts
    // after a writer counted itself in makes that writer's record durable.
    uint64_t flush_requested;      // writers counted in so far
    uint64_t flush_started;        // highest count a started flush covers
    uint64_t flush_completed;      // highest count a finished flush covers
    uint32_t flush_word;           // futex word: bumped when a flush completes
    uint32_t reserved_flush;
    // Moving average (1/8 weight per operation) of recent run times, start to finish:
    // whether the waiter next in line spins for its turn (volatile; was reserved bytes).
    uint64_t recent_run_ns;
    uint64_t reserved1[2];

    uint64_t wait_histogram[PMLL_HISTOGRAM_BUCKETS];
    uint64_t run_histogram[PMLL_HISTOGRAM_BUCKETS];
    char name[256];
    // Futex words for turns (volatile; were reserved bytes, so not in the layout signature):
    // the waiter of ticket t sleeps on word t % PMLL_QUEUE_TURN_WORDS, bumped and woken when
    // `serving` reaches t, so one finished operation wakes one process, not every waiter.
    // They live in the head, not in the records: a store into a record after its last msync
    // would dirty its page again and cost a page write at the next flush of the ring.
    uint32_t turn_words[PMLL_QUEUE_TURN_WORDS];
    uint8_t reserved2[128];
} pmll_queue_head_t;

_Static_assert(sizeof(pmll_queue_head_t) == 1024, "queue head is 1 KiB");
_Static_assert(offsetof(pmll_queue_head_t, completed) == 64, "queue stats on line 2");
_Static_assert(offsetof(pmll_queue_head_t, name) == 576, "queue name offset");
_Static_assert(offsetof(pmll_queue_head_t, turn_words) == 832, "queue turn words on a line of their own");

// One operation. Persistent queues make each state transition durable before going on.
typedef struct pmll_record {
    uint64_t ticket;
    uint32_t state;                // PMLL_RECORD_* (one aligned store per transition)
    uint32_t owner_token;
    int32_t owner_pid;
    uint32_t attempts;
    uint32_t batch_size;           // operations in this record's batch, counted from it
    uint32_t recovered;            // 0; 1 once recovery handled this abandoned record; 2 parked in the store
    uint64_t submitted_ns;
    uint64_t started_ns;
    uint64_t finished_ns;
    uint32_t payload_length;
    uint32_t checksum;             // CRC32C over ticket, kind, payload_length, payload
    char kind[64];
    char error[64];                // last error, truncated
    char owner_comm[16];
    uint32_t unused_turn_word;     // the turn word of builds 2ba42f7 to e585b83 (only they write it)
    uint32_t passed;               // PMLL_PASSED_*: a queued record voided because its owner was stopped
    uint8_t reserved[40];
    uint8_t payload[PMLL_PAYLOAD_MAX];
} pmll_record_t;

_Static_assert(sizeof(pmll_record_t) == 1280, "record is 1280 bytes");
_Static_assert(offsetof(pmll_record_t, kind) == 64, "record kind offset");
_Static_assert(offsetof(pmll_record_t, payload) == 256, "record payload offset");
_Static_assert(offsetof(pmll_record_t, passed) == 212, "record passed offset");
// A queued single operation of a build that knows passing is ELIGIBLE: a waiter may void it
// while its owner is stopped (older builds leave the word 0 and start with a plain store, so
// theirs are never passed). A record passed so keeps its slot until the owner has seen that
// (its `begin` compares the slot's state, which must still be its own record's).
#define PMLL_PASSED_NONE 0u
#define PMLL_PASSED_UNSEEN 1u
#define PMLL_PASSED_SEEN 2u
#define PMLL_PASSED_ELIGIBLE 3u
static inline uint32_t *pmll_record_passed(pmll_record_t *r) { return &r->passed; }

static inline uint32_t *pmll_queue_serving_word(pmll_queue_head_t *q) { return &q->serving_word; }
static inline uint32_t *pmll_record_state(pmll_record_t *r) { return &r->state; }
static inline uint32_t *pmll_queue_turn_word(pmll_queue_head_t *q, uint64_t ticket) { return &q->turn_words[ticket % PMLL_QUEUE_TURN_WORDS]; }
static inline uint64_t pmll_fetch_add64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline void pmll_max64(uint64_t *p, uint64_t v) {
    uint64_t cur = __atomic_load_n(p, __ATOMIC_ACQUIRE);
    while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {}
}

// MARK: - Audit ring (its own section, between the queue table and the heap)
//
// Appenders take a sequence number (compare-and-swap on next_seq), claim the slot it maps to, fill
// it and mark it complete; whoever holds PMLL_LOCKBYTE_AUDIT drains complete slots, in order,
// into hash-chained files beside the pool (Docs/Audit.md). A slot whose writer died is
// drained as a gap record. Pools created before audit logging have no ring (section size 0);
// the ring describes itself (magic, version, slot size), so it is not part of the layout
// signature and older pools stay openable.

#define PMLL_AUDIT_MAGIC "PMLLAUDT"
// Version 2 (this build's rings): a number in a slot's text may be PMLL_AUDIT_NUMBER_MARK and
// its 8 bytes, little-endian, which the drain writes in decimal (an appender then formats no
// digits). Version 1 rings (pools from earlier builds) hold text only, and appenders keep to
// that there, so that an earlier build draining such a pool writes the same lines.
// Version 3 (this build's rings): as 2, and a record written to a pool whose file lives in
// memory only (tmpfs) may leave its checksum out, saying so with PMLL_AUDIT_UNCHECKED in
// text_length. The checksum finds a record torn by a power failure, which such a file does
// not survive; a writer killed mid-record leaves it claimed, not complete, either way. In a
// version 2 ring every record has its checksum (a build that reads only version 2 may drain
// it); a build that reads only version 2 appends nothing to a version 3 ring.
#define PMLL_AUDIT_VERSION 3u
#define PMLL_AUDIT_VERSION_BINARY_NUMBERS 2u
#define PMLL_AUDIT_VERSION_TEXT_ONLY 1u
#define PMLL_AUDIT_UNCHECKED 0x80000000u   // in text_length: the record has no checksum (version 3)
#define PMLL_AUDIT_NUMBER_MARK 0xFFu   // never a byte of UTF-8
#define PMLL_AUDIT_SLOT_SIZE 512u
#define PMLL_AUDIT_TEXT_MAX 456u
#define PMLL_AUDIT_HASH_SIZE 32u
#define PMLL_AUDIT_FREE 0u        // phase of state (seq << 2 | phase)
#define PMLL_AUDIT_CLAIMED 1u
#define PMLL_AUDIT_COMPLETE 2u
#define PMLL_AUDIT_GAP 3u

typedef struct pmll_audit_ring {
    char magic[8];                 // "PMLLAUDT"
    uint32_t version;              // PMLL_AUDIT_VERSION
    uint32_t slot_count;           // slots after this header
    uint32_t slot_size;            // PMLL_AUDIT_SLOT_SIZE
    uint32_t checksum;             // CRC32C of magic .. slot_size
    uint64_t next_seq;             // the next sequence number to hand out (first: 1)
    // Persistent, written only under PMLL_LOCKBYTE_AUDIT: everything below `drained` is in the
    // files, and head_hash is the chain hash of record drained - 1 (zeros before the first).
    uint64_t drained;
    uint8_t head_hash[PMLL_AUDIT_HASH_SIZE];
    uint64_t file_index;           // the file being appended to (1, 2, ...)
    uint64_t file_first_seq;       // the first sequence number that file holds
    // Volatile, for the drainer: a slot not yet claimed since stall_since_ns is a writer that
    // died between taking its number and claiming it.
    uint64_t stall_seq;
    int64_t stall_since_ns;
    uint64_t gaps;                 // gap records written (statistics)
    // Volatile hint: CLOCK_MONOTONIC ns at which the current drainer took PMLL_LOCKBYTE_AUDIT,
    // 0 when it let go; others then make no lock attempt (a stale value only delays them).
    int64_t draining_since_ns;
    uint8_t reserved[136];
} pmll_audit_ring_t;

_Static_assert(sizeof(pmll_audit_ring_t) == 256, "audit ring header is 256 bytes");
_Static_assert(offsetof(pmll_audit_ring_t, next_seq) == 24, "audit next_seq offset");
_Static_assert(offsetof(pmll_audit_ring_t, drained) == 32, "audit drained offset");
_Static_assert(offsetof(pmll_audit_ring_t, draining_since_ns) == 112, "audit drain hint in the former reserved bytes");

typedef struct pmll_audit_slot {
    uint64_t state;                // seq << 2 | PMLL_AUDIT_* phase; one aligned CAS per transition
    uint32_t owner_token;          // the writer's participant token (set before the claim)
    int32_t pid;
    uint32_t uid;
    uint16_t event;                // AuditEvent raw value
    uint16_t outcome;              // AuditOutcome raw value
    int64_t time_ns;               // CLOCK_REALTIME
    uint32_t text_length;          // bytes of text, and PMLL_AUDIT_UNCHECKED (version 3)
    uint32_t checksum;             // CRC32C over seq and the fields from pid to the end of text
    char comm[16];
    char text[PMLL_AUDIT_TEXT_MAX];  // the object, UTF-8
} pmll_audit_slot_t;

_Static_assert(sizeof(pmll_audit_slot_t) == PMLL_AUDIT_SLOT_SIZE, "audit slot is 512 bytes");
_Static_assert(offsetof(pmll_audit_slot_t, pid) == 12, "audit slot fields follow the state and token");
_Static_assert(offsetof(pmll_audit_slot_t, text) == 56, "audit text offset");
_Static_assert(offsetof(pmll_audit_slot_t, checksum) == 36 && offsetof(pmll_audit_slot_t, comm) == 40, "the audit checksum covers 12..36 and 40..");

static inline uint64_t *pmll_audit_slot_state(pmll_audit_slot_t *s) { return &s->state; }
// A slot's text length without the UNCHECKED flag, at most PMLL_AUDIT_TEXT_MAX.
static inline size_t pmll_audit_text_length(const pmll_audit_slot_t *s) {
    uint32_t n = s->text_length & ~PMLL_AUDIT_UNCHECKED;
    return n < PMLL_AUDIT_TEXT_MAX ? n : PMLL_AUDIT_TEXT_MAX;
}
static inline uint64_t *pmll_audit_next_seq(pmll_audit_ring_t *r) { return &r->next_seq; }
// Asks for the first `lines` cache lines at p for writing (PREFETCHW), as an appender does for
// the ring slot of the next record so that writing it later does not wait for another core.
// Spelled out: for the baseline x86-64 target __builtin_prefetch(p, 1, 3) is PREFETCHT0, a read,
// after which the first store still waits for the other core to give the line up. PREFETCHW's
// encoding is a no-op on x86-64 processors without it.
static inline void pmll_prefetch_for_write(const void *p, int lines) {
    for (int i = 0; i < lines; i++) {
#if defined(__x86_64__)
        __asm__ volatile("prefetchw %0" : : "m"(*((const char *)p + 64 * i)));
#else
        __builtin_prefetch((const char *)p + 64 * i, 1, 3);
#endif
    }
}
// Decimal digits of v, written two at a time (the audit ring's appenders and its drain write
// several numbers per record; one digit per division was a chain of twenty multiplications).
static inline size_t pmll_decimal_length(uint64_t v) {
    static const uint64_t powers[20] = {1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull,
        100000000ull, 1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull, 10000000000000ull,
        100000000000000ull, 1000000000000000ull, 10000000000000000ull, 100000000000000000ull,
        1000000000000000000ull, 10000000000000000000ull};
    // v | 1: zero has one digit, and no power of ten above 1 is odd, so no other count moves.
    uint64_t w = v | 1;
    unsigned bits = 64u - (unsigned)__builtin_clzll(w);       // 1...64
    unsigned guess = (bits * 1233u) >> 12;                     // floor(bits * log10(2)), 0...19
    return (size_t)guess + (w >= powers[guess] ? 1u : 0u);
}
// Writes v's pmll_decimal_length(v) digits at out; returns the end.
static inline char *pmll_put_decimal(char *out, uint64_t v) {
    static const char pairs[201] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    char *end = out + pmll_decimal_length(v), *p = end;
    while (v >= 100) {
        uint64_t pair = v % 100;
        v /= 100;
        p -= 2;
        __builtin_memcpy(p, pairs + 2 * pair, 2);
    }
    if (v >= 10) {
        p -= 2;
        __builtin_memcpy(p, pairs + 2 * v, 2);
    } else {
        *--p = (char)('0' + v);
    }
    return end;
}

// Moves the lines of [p, p + length) towards the shared cache (CLDEMOTE, a hint: a no-op where
// unsupported), after a reader on one core is done with lines a writer on another core will
// write next.
static inline void pmll_cache_demote(const void *p, size_t length) {
#if defined(__x86_64__)
    for (size_t at = 0; at < length; at += 64) __asm__ volatile("cldemote %0" : : "m"(*((const char *)p + at)));
#else
    (void)p; (void)length;
#endif
}
static inline uint64_t *pmll_audit_draining(pmll_audit_ring_t *r) { return (uint64_t *)&r->draining_since_ns; }

// MARK: - State store (in the heap section)

#define PMLL_STORE_MAGIC "PMLLSTOR"
// Store version 2 (pools created from 2026-12-05): key slots of 256 bytes, records of up to
// 216 bytes inline. Version 1: slots of 128 bytes, 88 inline; such pools keep that width for
// life (their index grows in 128-byte slots), and this build reads and writes both.
#define PMLL_STORE_VERSION 2u
#define PMLL_STORE_VERSION_NARROW 1u
#define PMLL_BLOCK_SIZE 256u
#define PMLL_KEY_MAX 255u
#define PMLL_VALUE_MAX 67108864u       // 64 MiB: one extent of blocks
#define PMLL_KEY_SLOT_NARROW 128u     // bytes per key slot in a version 1 store
#define PMLL_KEY_SLOT_WIDE 256u       // bytes per key slot in a version 2 store
#define PMLL_LOG_SLOT_SIZE 65536u

#define PMLL_KEY_EMPTY 0u
#define PMLL_KEY_USED 1u
#define PMLL_KEY_TOMBSTONE 2u

// First page of the heap: where the store's tables are. Written once at creation.
typedef struct pmll_store_super {
    char magic[8];
    uint32_t version;
    uint32_t key_capacity;         // index slots
    uint32_t block_count;          // value blocks of PMLL_BLOCK_SIZE
    uint32_t log_slots;            // undo-log slots of PMLL_LOG_SLOT_SIZE
    uint64_t index_offset;         // all offsets from the start of the pool file
    uint64_t logs_offset;
    uint64_t bitmap_offset;
    uint64_t blocks_offset;
    uint32_t store_lock;           // unused, 0 (the store lock is found by its name, "pmll:store")
    uint32_t checksum;             // CRC32C of the bytes before it
} pmll_store_super_t;

_Static_assert(sizeof(pmll_store_super_t) == 64, "store superblock");

// The store's key census, right after the superblock in its page: the number of USED key
// slots, kept by every commit and undo-logged with the slots, so that `check` sees a key that
// vanished (a slot's state flipped, an index page zeroed) even when it had no blocks. Pools
// written before it hold zeros here; the magic tells a maintained census apart.
// It also counts the file-batch journals (keys under "pmll:batch/"), once a commit has counted
// them (flag PMLL_CENSUS_JOURNALS; pools from before it have 0 in both fields), so that opening a
// pool does not scan every key to find journals left by dead processes.
#define PMLL_CENSUS_MAGIC 0x5355534E45434C4Cull   // "LLCENSUS"
#define PMLL_CENSUS_OFFSET 64u                    // from the start of the heap section
#define PMLL_CENSUS_JOURNALS 1u                   // journal_keys is kept
typedef struct pmll_store_census {
    uint64_t magic;
    uint64_t live_keys;
    uint32_t checksum;             // CRC32C of magic and live_keys, then flags and journal_keys if flags != 0
    uint32_t flags;                // PMLL_CENSUS_*
    uint64_t journal_keys;         // keys under "pmll:batch/" (with PMLL_CENSUS_JOURNALS)
} pmll_store_census_t;

_Static_assert(sizeof(pmll_store_census_t) == 32, "store census");
_Static_assert(offsetof(pmll_store_census_t, flags) == 20 && offsetof(pmll_store_census_t, journal_keys) == 24, "census fields that were reserved");

// The fixed head of a key slot. The slot's record (key, then value) follows the head inline
// when it fits the rest of the slot (the store's slot width less this head); a larger one
// lives in an extent of blocks holding key then value.
typedef struct pmll_key_slot {
    uint32_t state;                // PMLL_KEY_*
    uint32_t key_hash;             // CRC32C of the key
    uint32_t key_length;
    uint32_t value_length;
    uint32_t first_block;
    uint32_t block_count;          // 0: inline
    uint32_t checksum;             // CRC32C over the fields above and the key and value bytes
    uint32_t reserved;
    uint64_t version;              // bumped by every commit that changes the key
} pmll_key_slot_t;

#define PMLL_KEY_SLOT_HEAD 40u        // the inline record starts here
_Static_assert(sizeof(pmll_key_slot_t) == PMLL_KEY_SLOT_HEAD, "key slot head; the inline record follows it");
_Static_assert(PMLL_KEY_SLOT_NARROW % 64 == 0 && PMLL_KEY_SLOT_WIDE % 64 == 0, "key slots are whole cache lines");
_Static_assert(4096 % PMLL_KEY_SLOT_WIDE == 0, "a key slot never straddles a page");

// Bytes per key slot of a store of `version` (0: not a version this build knows).
static inline uint32_t pmll_key_slot_width(uint32_t version) {
    return version == PMLL_STORE_VERSION ? PMLL_KEY_SLOT_WIDE : version == PMLL_STORE_VERSION_NARROW ? PMLL_KEY_SLOT_NARROW : 0;
}

// MARK: - Growth (the store's directory of areas appended to the file after its creation)

// The file grows by areas appended after the created size (the header's pool_size), each
// reserved with fallocate before the directory names it. The directory lives in the heap's
// first page, after the census; pools that never grew hold zeros here. It changes only
// through the undo log (a growth is a transaction of its own), so a crash leaves the old
// directory or the new one; an area the file holds but the directory does not name is unused.
static const uint64_t PMLL_GROWTH_MAGIC = 0x48545752474C4C50ull;   // "PLLGRWTH"
#define PMLL_GROWTH_OFFSET 128u                   // from the start of the heap section
#define PMLL_AREA_MAX 96u
#define PMLL_AREA_FREE 0u                         // named but unused (a key index that moved out)
#define PMLL_AREA_BLOCKS 1u                       // bitmap, then value blocks
#define PMLL_AREA_INDEX 2u                        // key slots
#define PMLL_AREA_LOG 3u                          // overflow of one undo-log slot (first_block: the slot)
#define PMLL_AREA_LOCKS 4u                        // a lock-table extension (first_block: its ordinal k)
#define PMLL_AREA_QUEUES 5u                       // a queue-table extension (first_block: its ordinal k)
#define PMLL_INDEX_CREATED 0xFFFFFFFFu            // index_area: the index made at creation

typedef struct pmll_area {
    uint64_t offset;               // from the start of the pool file; page aligned
    uint64_t size;                 // bytes; page aligned
    uint32_t kind;                 // PMLL_AREA_*
    uint32_t first_block;          // BLOCKS: number of its first block (a multiple of 8)
    uint32_t count;                // BLOCKS: its blocks; INDEX: its key slots; LOG: its bytes
    uint32_t bitmap_bytes;         // BLOCKS: bytes of bitmap before the blocks (page multiple)
} pmll_area_t;

_Static_assert(sizeof(pmll_area_t) == 32, "growth area");

typedef struct pmll_growth {
    uint64_t magic;                // PMLL_GROWTH_MAGIC once the pool first grew
    uint64_t generation;           // bumped by every change: processes re-read the directory
    uint32_t area_count;
    uint32_t index_area;           // the area holding the key index, or PMLL_INDEX_CREATED
    uint32_t growths;              // growths committed (each completes one log sequence number)
    uint32_t checksum;             // CRC32C of the bytes before it and of the named areas
    pmll_area_t areas[PMLL_AREA_MAX];
} pmll_growth_t;

_Static_assert(sizeof(pmll_growth_t) == 32 + 32 * PMLL_AREA_MAX, "growth directory");
_Static_assert(PMLL_GROWTH_OFFSET + sizeof(pmll_growth_t) <= 4096, "growth directory fits the store's first page");
_Static_assert(offsetof(pmll_growth_t, checksum) == 28 && offsetof(pmll_growth_t, areas) == 32, "growth directory fields");

// A table extension: one page of this header, then the table. Extension k of a table created
// with C elements holds elements [C * 2^k, C * 2^(k+1)), so an index names its extension
// without a lookup. Lock-table extensions (PMLL_AREA_LOCKS) hold 512-byte lock entries; queue
// extensions (PMLL_AREA_QUEUES) hold C * 2^k queue heads, then each one's record ring. The
// header is written after the growth that made the area committed; processes use an extension
// only once its header is intact, so an area a rolled-back growth left behind is never read
// as a table.
static const uint64_t PMLL_LOCK_AREA_MAGIC = 0x4B434F4C4C4C4D50ull;   // "PMLLLOCK"
static const uint64_t PMLL_QUEUE_AREA_MAGIC = 0x5545555141514D50ull;  // "PMQAQUEU"
#define PMLL_EXTENSIONS_MAX 21u                  // C * 2^21 > 2^20 elements for any C >= 1
#define PMLL_LOCK_ENTRIES_MAX (1u << 20)         // entries of all tables together (ledger words hold index + 1 in 21 bits)
#define PMLL_QUEUES_MAX 4096u                    // queues of all tables together

typedef struct pmll_table_area {
    uint64_t magic;                // PMLL_LOCK_AREA_MAGIC or PMLL_QUEUE_AREA_MAGIC once the growth committed
    uint32_t ordinal;              // k
    uint32_t first;                // first index: created capacity << k
    uint32_t count;                // elements: created capacity << k
    uint32_t checksum;             // CRC32C of the bytes before it
} pmll_table_area_t;

_Static_assert(sizeof(pmll_table_area_t) == 24, "table area header");
_Static_assert(offsetof(pmll_table_area_t, checksum) == 20, "table area checksum");

// MARK: - Redo log (commits on a disk: one shared barrier per commit)

// A growth area of kind PMLL_AREA_REDO, made by the first commit in parallel on a pool whose
// barriers reach a disk: one page of this header, then a ring of `capacity` bytes of records.
// A commit that only rewrites records in their key slots writes one record of the slots' new
// bytes, makes it durable by a flush shared with every commit waiting, and then copies the
// bytes into the slots with no barrier of its own (Docs/Transactions.md "The redo log").
// Every record at or above `checkpoint` is redone by the next exclusive holder of the store
// lock, which then makes the key index durable and moves `checkpoint` to `tail`: so an
// exclusive change never lies under a record that could be redone over it.
// An older build refuses the area's kind rather than ignore records it cannot redo.
static const uint64_t PMLL_REDO_MAGIC = 0x4F4445524C4C4D50ull;   // "PMLLREDO"
#define PMLL_AREA_REDO 6u                         // the redo log (first_block 0; count: ring bytes)
#define PMLL_REDO_ALIGN 64u                       // records start at multiples of this
#define PMLL_REDO_RECORD_MAGIC 0x4F444552u        // "REDO"

typedef struct pmll_redo_header {
    uint64_t magic;                // PMLL_REDO_MAGIC, stored last when the area is made
    uint64_t capacity;             // ring bytes after the header page (a multiple of PMLL_REDO_ALIGN)
    uint64_t checkpoint;           // log position below which every record is applied and durable
    uint32_t checksum;             // CRC32C of magic and capacity
    uint32_t checkpoint_claimed;   // 1 once a commit found the ring half used and went to checkpoint (volatile)
    uint64_t epoch;                // the pool's volatile_resets when the log was last settled
                                   // whole: any other value, and the volatile words below are stale
    uint8_t pad0[24];
    // Volatile (rebuilt by the first exclusive holder after a volatile reset), each word group
    // on its own line: reservers and flushers of several processes write them.
    uint64_t tail;                 // log bytes reserved: the position of the next record
    uint8_t pad1[56];
    uint64_t flush_requested;      // numbers taken by writers whose record is complete
    uint64_t flush_started;        // the highest number a flush under way or done covers
    uint64_t flush_completed;      // the highest number a completed flush covers
    uint32_t flush_word;           // futex word: bumped after each flush (sleeper bit as queues)
    uint32_t flushing;             // 1 while one process flushes for all
    uint32_t writing;              // records reserved and not yet complete
    uint32_t group;                // writers the last flush covered or saw arrive (a hint)
    uint64_t flush_nanoseconds;    // how long the last flush took (a hint)
    uint32_t gather_word;          // wake word (sleeper bit as queues) a flusher sleeps on while it
                                   // waits for its group: the writer completing the group bumps it
    uint8_t pad2[12];
    // What the flushes did since the log was made (counters for `pmll status`, the metrics and
    // the benchmarks' account of a flush cycle; zero in logs made before 2026-12-06). Only the
    // flusher of the moment adds to them; never cleared, made durable only with the header
    // (a power failure may take the last ones back).
    uint64_t flushes;              // flushes made
    uint64_t flushed_commits;      // records they covered
    uint64_t flush_total_ns;       // time in the flush itself (msync of the ring)
    uint64_t gather_total_ns;      // time flushers waited for their group before flushing
    uint8_t pad3[32];
} pmll_redo_header_t;

_Static_assert(sizeof(pmll_redo_header_t) == 256, "redo log header");
_Static_assert(offsetof(pmll_redo_header_t, checksum) == 24 && offsetof(pmll_redo_header_t, epoch) == 32 && offsetof(pmll_redo_header_t, tail) == 64, "redo header fields");
_Static_assert(offsetof(pmll_redo_header_t, flush_requested) == 128 && offsetof(pmll_redo_header_t, flush_word) == 152, "redo flush fields");
_Static_assert(offsetof(pmll_redo_header_t, group) == 164 && offsetof(pmll_redo_header_t, flush_nanoseconds) == 168, "redo group hints");
_Static_assert(offsetof(pmll_redo_header_t, gather_word) == 176, "redo gather word");
_Static_assert(offsetof(pmll_redo_header_t, flushes) == 192 && offsetof(pmll_redo_header_t, gather_total_ns) == 216, "redo statistics");

// One record: this head, then `count` entries (pmll_log_entry_t, kind PMLL_LOG_BYTES: a whole
// key slot's new bytes at `offset`, padded to 8), padded to PMLL_REDO_ALIGN. A record is valid
// where it lies only if its magic, its own position and its checksum match: what a previous
// lap of the ring left, or a record whose writer died half-way, is not.
typedef struct pmll_redo_record {
    uint64_t position;             // log position of this record (its ring offset is position % capacity)
    uint64_t version;              // the version the commit gave every slot it wrote
    uint32_t magic;                // PMLL_REDO_RECORD_MAGIC
    uint32_t count;                // entries
    uint32_t bytes;                // the whole record, head included (a multiple of PMLL_REDO_ALIGN)
    uint32_t checksum;             // CRC32C of the record with this field 0
} pmll_redo_record_t;

_Static_assert(sizeof(pmll_redo_record_t) == 32, "redo record head");
_Static_assert(offsetof(pmll_redo_record_t, checksum) == 28, "redo record checksum");
_Static_assert(PMLL_LOCK_ENTRIES_MAX < (PMLL_LEDGER_READ >> PMLL_LEDGER_COUNT_BITS), "a lock index + 1 fits a ledger word");

// Undo log slot. Pending iff seq > done_seq and the checksum over header and entries holds;
// the aligned 8-byte store of done_seq is a transaction's commit point.
typedef struct pmll_log_header {
    uint64_t done_seq;             // commit point: the last seq that committed or was rolled back
    uint64_t seq;                  // this log's transaction
    uint32_t owner_token;
    uint32_t entry_count;
    uint32_t bytes;                // entry bytes after the header
    uint32_t checksum;             // CRC32C over seq, owner_token, entry_count, bytes and the entries
    // Counters of the transactions that committed through this log (under the store lock;
    // retries by atomic add). Store-wide figures are sums over all log slots. These were
    // reserved zero bytes that earlier builds never wrote, so they are not part of the layout
    // signature: pools created before them open unchanged.
    uint64_t keyset_changes;       // commits that inserted or removed a key (phantom check of scans)
    uint64_t commits;              // commits that changed the store
    uint64_t conflicts;            // serializable validations that failed
    uint64_t retries;              // transaction bodies re-run after a conflict
} pmll_log_header_t;

_Static_assert(sizeof(pmll_log_header_t) == 64, "log header");

// Each entry: what a rollback undoes. PMLL_LOG_BYTES: the old contents of [offset, offset +
// length) of the file, which follow the entry, padded to 8. The allocation entries carry no
// bytes: blocks [offset, offset + length) (block numbers) that the transaction allocated (a
// rollback clears their bits) or freed (a rollback sets them), so that a value of many blocks
// costs one entry, not its bitmap bytes.
#define PMLL_LOG_BYTES 0u
#define PMLL_LOG_ALLOCATED 1u
#define PMLL_LOG_FREED 2u
// The log of a commit that only rewrote records in their key slots (every parallel commit, and
// exclusive ones that replaced inline records and nothing else), whose
// commit point is made durable lazily: `offset` is the version it gave every slot it wrote
// (`length` 0, no bytes). Recovery keeps such a transaction if every slot it logged holds an
// intact record of at least that version, and rolls it back otherwise (Docs/Transactions.md
// "The lazy commit point"). Builds before it refuse a pending log with it: they would roll
// back a commit that had returned.
#define PMLL_LOG_VERSION 3u
typedef struct pmll_log_entry {
    uint64_t offset;               // from the start of the pool file, or a block number
    uint32_t length;               // bytes, or blocks
    uint32_t kind;                 // PMLL_LOG_*; was reserved (0: bytes) in earlier logs
} pmll_log_entry_t;

_Static_assert(sizeof(pmll_log_entry_t) == 16, "log entry header");
_Static_assert(offsetof(pmll_log_entry_t, length) == 8, "log entry length offset");
_Static_assert(offsetof(pmll_log_header_t, done_seq) == 0 && offsetof(pmll_log_header_t, seq) == 8, "log commit point first");
_Static_assert(offsetof(pmll_log_header_t, checksum) == 28, "log checksum offset");
_Static_assert(offsetof(pmll_log_header_t, keyset_changes) == 32 && offsetof(pmll_log_header_t, retries) == 56, "log counters in the former reserved bytes");
_Static_assert(offsetof(pmll_store_super_t, index_offset) == 24 && offsetof(pmll_store_super_t, checksum) == 60, "store superblock fields");
_Static_assert(offsetof(pmll_key_slot_t, version) == 32, "key version offset");

// MARK: - Atomics on shared memory (inlined into Swift).

static inline uint32_t pmll_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pmll_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int pmll_cas32(uint32_t *p, uint32_t *expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
// Sequentially consistent: a reader's ledger entry, ordered before its loads of the lock
// (reader bias needs store-load order here; on x86 it is the same instruction).
static inline int pmll_cas32_seq_cst(uint32_t *p, uint32_t *expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline uint64_t pmll_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void pmll_store64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t pmll_add64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint64_t pmll_load64_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pmll_store64_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int pmll_cas64(uint64_t *p, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline uint32_t pmll_add32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }

static inline uint32_t pmll_xchg32(uint32_t *p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
static inline void pmll_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// The library's own locks (state store, queues, batches) are named "pmll:..."; read in
// place (copying the 256-byte name out to compare it was 5 % of a queue operation).
static inline int pmll_lock_is_internal(const pmll_lock_entry_t *e) {
    return e->name[0] == 'p' && e->name[1] == 'm' && e->name[2] == 'l' && e->name[3] == 'l' && e->name[4] == ':';
}

// Lock fast paths: one CAS each, no syscall.
// Sequentially consistent, with the load of `readers` after it: a writer that takes the word
// and a reader that counts itself in and then loads the word cannot both miss each other.
static inline int pmll_lock_try_fast(pmll_lock_entry_t *e, uint32_t token) {
    uint32_t expected = 0;
    return __atomic_compare_exchange_n(&e->word, &expected, token, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}
// Shared holds, reader bias or a stale DRAIN flag after a writer took the word: the writer
// must drain (and revoke the bias).
static inline int pmll_lock_readers_present(pmll_lock_entry_t *e) {
    return (__atomic_load_n(&e->readers, __ATOMIC_SEQ_CST) & (PMLL_READERS_COUNT | PMLL_READERS_DRAIN | PMLL_READERS_BIASED)) != 0;
}
// Shared acquisitions through the reader bias are tallied per thread and added to the lock's
// count in batches (biastally.c): counting each in `readers` would write the very cache line
// that the bias keeps biased readers off. A thread tallies up to PMLL_BIAS_TALLY_LOCKS locks; a
// lock's tally is added when it reaches the batch, when another lock takes its place, when the
// thread exits, when the pool is unmapped (pmll_bias_flush_range) and at process exit; a
// killed process loses at most a batch per lock and thread.
//
// The tally also tells the thread which locks it holds biased: a shared acquisition of one of
// them tries the bias first; any other lock is counted first and sees in the count whether the
// bias is on. So a lock whose bias is mostly off costs no load of `readers` before the add,
// which would fetch the cache line twice (to share, then to own) when other processes write it.
#define PMLL_BIAS_TALLY_BATCH 1024u
#define PMLL_BIAS_TALLY_LOCKS 8u
typedef struct pmll_bias_tally {
    pmll_lock_entry_t *_Nullable entry[PMLL_BIAS_TALLY_LOCKS];
    uint32_t count[PMLL_BIAS_TALLY_LOCKS];  // written by its thread only (relaxed), read under the lock
    struct pmll_bias_tally *_Nullable next;
    uint32_t free;                 // its thread exited: the next new thread takes it
    uint32_t victim;               // the slot the next new lock takes when all are in use
    uint64_t mask;                 // pmll_bias_bit of every entry: most locks are not there, and one test says so
} pmll_bias_tally_t;
_Static_assert(sizeof(pmll_bias_tally_t) <= 128, "a tally fits the two cache lines it is allocated on");
extern __thread pmll_bias_tally_t *_Nullable pmll_bias_tally;
// Lock entries are 512 bytes apart: bits 9-14 of the address tell most of them apart.
static inline uint64_t pmll_bias_bit(const pmll_lock_entry_t *_Nullable e) {
    return 1ull << (((uintptr_t)e >> 9) & 63);
}
// The calling thread's tally slot for `e`, or -1.
static inline int pmll_bias_slot(const pmll_lock_entry_t *e) {
    pmll_bias_tally_t *t = pmll_bias_tally;
    // Relaxed loads: another thread unmapping a pool rewrites the slots of its locks.
    if (t == NULL || (__atomic_load_n(&t->mask, __ATOMIC_RELAXED) & pmll_bias_bit(e)) == 0) return -1;
    for (int i = 0; i < (int)PMLL_BIAS_TALLY_LOCKS; i++) {
        if (__atomic_load_n(&t->entry[i], __ATOMIC_RELAXED) == e) return i;
    }
    return -1;
}
void pmll_bias_count_slow(pmll_lock_entry_t *e);
// Counts one biased acquisition of `e`, whose slot pmll_bias_slot found as `i` (or -1).
static inline void pmll_bias_count_at(pmll_lock_entry_t *e, int i) {
    if (i >= 0) {
        pmll_bias_tally_t *t = pmll_bias_tally;
        uint32_t n = __atomic_load_n(&t->count[i], __ATOMIC_RELAXED);
        if (n < PMLL_BIAS_TALLY_BATCH) { __atomic_store_n(&t->count[i], n + 1, __ATOMIC_RELAXED); return; }
    }
    pmll_bias_count_slow(e);
}
// Gives `e` a slot in the thread's tally (on), or takes it out, its count added (off).
void pmll_bias_hint(pmll_lock_entry_t *e, int on);
// This process's biased acquisitions of the lock not yet added to its count.
uint64_t pmll_bias_pending(const pmll_lock_entry_t *e);
// Adds and forgets every tally of a lock in [base, base + length): the mapping is going away.
void pmll_bias_flush_range(const void *base, uint64_t length);
// A biased reader, after entering its ledger (a sequentially consistent CAS, so no fence is
// needed before these loads): the word, or UINT32_MAX if the bias is off. The word first: a
// reader that read BIASED first and was preempted before the word could find the word free
// after a revoking writer had scanned the ledgers without it, turned the bias off and left,
// and go in with the bias off, unseen by the next writer (Docs/LockProtocol.md). Read in this
// order, a free word means any writer takes it later (and its scan sees this ledger entry) or
// had turned the bias off before (and the load of `readers` sees it off).
static inline uint32_t pmll_bias_check(pmll_lock_entry_t *e) {
    uint32_t w = __atomic_load_n(&e->word, __ATOMIC_SEQ_CST);
    uint64_t r = __atomic_load_n(&e->readers, __ATOMIC_SEQ_CST);
    return (r & PMLL_READERS_BIASED) ? w : UINT32_MAX;
}
// After a biased holder left its ledger: 1 if a writer sleeps until the ledgers are empty
// (DRAIN set; a writer that found the bias on waits for them). DRAIN is cleared first, so that
// a writer about to sleep on the word sees it change and looks again.
static inline int pmll_bias_leave_wakes(pmll_lock_entry_t *e) {
    if ((__atomic_load_n(&e->readers, __ATOMIC_SEQ_CST) & PMLL_READERS_DRAIN) == 0) return 0;
    return (__atomic_fetch_and(&e->readers, ~PMLL_READERS_DRAIN, __ATOMIC_SEQ_CST) & PMLL_READERS_DRAIN) != 0;
}
static inline int pmll_lock_biased(pmll_lock_entry_t *e) {
    return (__atomic_load_n(&e->readers, __ATOMIC_SEQ_CST) & PMLL_READERS_BIASED) != 0;
}
// A reader counts itself in (`add` is 1, plus PMLL_READERS_ONE_ACQUISITION on its first try)
// and returns the word as it is after that: free (owner 0) means the shared hold is granted.
static inline uint32_t pmll_readers_enter(pmll_lock_entry_t *e, uint64_t add, uint64_t *before) {
    *before = __atomic_fetch_add(&e->readers, add, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&e->word, __ATOMIC_SEQ_CST);
}
// A reader counts itself out; returns the value before.
static inline uint64_t pmll_readers_leave(pmll_lock_entry_t *e) {
    return __atomic_fetch_sub(&e->readers, 1, __ATOMIC_SEQ_CST);
}
static inline uint64_t *pmll_entry_readers(pmll_lock_entry_t *e) { return &e->readers; }
// The low half of `readers`, which writers sleep on.
static inline uint32_t *pmll_entry_readers_word(pmll_lock_entry_t *e) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (uint32_t *)&e->readers;
#else
    return (uint32_t *)&e->readers + 1;
#endif
}
static inline pmll_shared_stats_t *pmll_entry_shared(pmll_lock_entry_t *e) { return &e->shared; }
static inline uint32_t pmll_or32(uint32_t *p, uint32_t v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t pmll_and32(uint32_t *p, uint32_t v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t pmll_and64(uint64_t *p, uint64_t v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t pmll_or64(uint64_t *p, uint64_t v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t pmll_sub64(uint64_t *p, uint64_t v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t pmll_sub32(uint32_t *p, uint32_t v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
static inline void pmll_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline int pmll_lock_release_fast(pmll_lock_entry_t *e, uint32_t token) {
    uint32_t expected = token;
    return __atomic_compare_exchange_n(&e->word, &expected, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

// Field addresses, so Swift never computes offsets itself.
static inline uint32_t * pmll_entry_word(pmll_lock_entry_t *e) { return &e->word; }
static inline uint32_t * pmll_entry_handoff(pmll_lock_entry_t *e) { return &e->handoff_target; }
static inline uint32_t * pmll_entry_state(pmll_lock_entry_t *e) { return &e->state; }
static inline uint64_t * pmll_entry_timeouts(pmll_lock_entry_t *e) { return &e->timeouts; }
static inline uint32_t * pmll_slot_state(pmll_process_slot_t *s) { return &s->state; }
static inline uint32_t * pmll_header_policy_epoch(pmll_header_t *h) { return &h->policy_epoch; }
static inline uint32_t * pmll_slot_generation(pmll_process_slot_t *s) { return &s->generation; }
static inline uint32_t * pmll_slot_wait(pmll_process_slot_t *s, uint32_t i) { return &s->waiting_on[i]; }
// Word i of the reader ledger: the dedicated words first, then the wait ledger's.
static inline uint32_t * pmll_slot_ledger(pmll_process_slot_t *s, uint32_t i) {
    return i < PMLL_READ_LEDGER ? &s->reading[i] : &s->waiting_on[i - PMLL_READ_LEDGER];
}

// A ledger word of its own for one biased hold (ReaderLedger.own): the first free one of the
// last PMLL_LEDGER_OWNABLE words, claimed by a sequentially consistent CAS; UINT32_MAX if none.
// A ledger word no hold uses: empty, or a read word at 0 holds (its tag may be taken over).
static inline int pmll_ledger_is_free(uint32_t v) {
    return v == 0 || ((v & PMLL_LEDGER_READ) != 0 && (v & PMLL_LEDGER_COUNT_MASK) == 0);
}
static inline uint32_t pmll_ledger_own(pmll_process_slot_t *s, uint32_t tag) {
    for (uint32_t i = PMLL_READ_LEDGER + PMLL_WAIT_LEDGER - PMLL_LEDGER_OWNABLE; i < PMLL_READ_LEDGER + PMLL_WAIT_LEDGER; i++) {
        uint32_t *p = pmll_slot_ledger(s, i);
        uint32_t v = __atomic_load_n(p, __ATOMIC_RELAXED);
        if (pmll_ledger_is_free(v) && __atomic_compare_exchange_n(p, &v, tag | PMLL_LEDGER_OWNED, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return i;
    }
    return UINT32_MAX;
}
// Gives an owned word back: nobody else writes it, so a release store is enough.
static inline void pmll_ledger_disown(pmll_process_slot_t *s, uint32_t i) {
    __atomic_store_n(pmll_slot_ledger(s, i), 0, __ATOMIC_RELEASE);
}

// MARK: - Lock hierarchy tracking

// The innermost lock held by the calling thread in a synchronous scope (NULL: none).
// A plain thread-local pointer, so the runtime hierarchy check costs no syscall.
extern __thread const pmll_lock_entry_t *_Nullable pmll_held_top;
static inline const pmll_lock_entry_t *_Nullable pmll_held_top_get(void) { return pmll_held_top; }
static inline void pmll_held_top_set(const pmll_lock_entry_t *_Nullable entry) { pmll_held_top = entry; }
// Transaction nesting on the calling thread.
extern __thread uint32_t pmll_tx_depth;
static inline uint32_t pmll_tx_depth_get(void) { return pmll_tx_depth; }
static inline void pmll_tx_depth_set(uint32_t depth) { pmll_tx_depth = depth; }
// How many asynchronous lock scopes are open in this process: while none is, a synchronous
// acquisition need not look at the task-local record at all.
extern uint32_t pmll_async_scope_count;
// Async lock scopes open in this process: 0 means no task-local hierarchy record to look up.
static inline uint32_t pmll_async_scopes(void) { return __atomic_load_n(&pmll_async_scope_count, __ATOMIC_ACQUIRE); }
void pmll_async_scopes_add(int32_t delta);

// MARK: - Crash injection

// Non-zero when PMLL_CRASH_AT was set at load time (read by a constructor before main).
extern int pmll_crash_armed;
static inline int pmll_crash_is_armed(void) { return __builtin_expect(pmll_crash_armed, 0); }

// MARK: - Processes

// A pidfd for `pid`, only if that pid is still the process that started at `start_time`
// (clock ticks since boot, /proc/PID/stat field 22): -ESRCH otherwise, -errno on failure.
int pmll_pidfd_open_checked(int32_t pid, uint64_t start_time);
void pmll_fd_close(int fd);
// Sleeps until *word != expected or a wake, the process behind `pidfd` exits, or the absolute
// CLOCK_MONOTONIC deadline (INT64_MAX: none). 0 woken, 1 the process exited, -ETIMEDOUT, or
// -ENOSYS when this kernel cannot (the caller sleeps on the word alone, as before).
int pmll_wait_word_or_exit(uint32_t *word, uint32_t expected, int64_t deadline_ns, int pidfd);
int pmll_owner_watch_supported(void);
// Puts the slot's exit word on this process's exit-watch thread's robust list (starting the
// thread once per process). 0, or -errno (then the slot's exit word stays 0: no early watch).
int pmll_exit_watch_attach(pmll_process_slot_t *slot);
void pmll_exit_watch_detach(pmll_process_slot_t *slot);
// The CPU thread `tid` of `pid` runs on or last ran on (/proc stat field 39), or -1. An exit-watch
// thread is pinned to the CPU it started on, so this is where its exit will run.
int pmll_thread_cpu(int32_t pid, int32_t tid);
// Moves the calling thread off `cpu` if it runs there and may run elsewhere (its mask unchanged
// afterwards): a sleeper's last CPU is where the kernel first tries to wake it.
void pmll_thread_step_off(int cpu);
// Fields 3 (state), 9 (flags) and 22 (start time) of the text of a /proc/.../stat file: 0, or -1.
int pmll_proc_stat_parse(const char *buf, char *state, unsigned long long *flags, unsigned long long *start);
// 1 if process `pid`, started at `start_time` (field 22 of its stat; 0: not compared), is
// stopped (state T by a signal, t by a tracer); 0 if it is not, is gone, or is another process now.
int pmll_process_stopped(int32_t pid, uint64_t start_time);
// Field 39 (processor) of the same text: the CPU the thread runs on or whose run queue it waits
// on; -1 if absent.
int pmll_proc_stat_processor(const char *buf);
// 1 if field 31 (signal: the thread's own pending signals) of the same text has SIGKILL, 0 if
// not, -1 if absent. A SIGKILL sent to a process is added to every thread's own set.
int pmll_proc_stat_sigkill(const char *buf);
// A check of one process's threads through /proc, opened while it lives (exitcheck.c): NULL if
// `pid` is no longer the process that started at `start_time`, or /proc cannot be read.
typedef struct pmll_exit_check pmll_exit_check_t;
// Pins the calling thread to the CPU it runs on now: that CPU (the same again while pinned), or
// -1. While pinned, what the thread reads from /proc was read while it, not another thread,
// ran on that CPU. pmll_thread_unpin restores the mask it had.
int pmll_thread_pin_here(void);
void pmll_thread_unpin(void);
// `exit_tid`: the TID in the process's exit word (its exit-watch thread), or 0.
pmll_exit_check_t *_Nullable pmll_exit_check_open(int32_t pid, uint64_t start_time, int32_t exit_tid);
// 1 if the process can run no more user code (every thread has begun to exit, or it is gone),
// 0 if some thread still can, -1 if it cannot be told. `exit_fired`: the caller saw the exit
// word marked FUTEX_OWNER_DIED (the exit-watch thread is in its exit: not read; and one
// listing of the threads suffices, exitcheck.c).
int pmll_exit_check_run(pmll_exit_check_t *c, int exit_fired);
void pmll_exit_check_close(pmll_exit_check_t *_Nullable c);
// Closes later what a watch whose wait is over holds (its check and a pidfd, or -1): at the
// next pmll_exit_check_close_ended(), or at once when two ended watches already wait.
void pmll_exit_check_end(pmll_exit_check_t *_Nullable c, int pidfd);
// Closes every ended watch's descriptors.
void pmll_exit_check_close_ended(void);
// Sleeps until *word != expected, a wake on either word, or the deadline: futex_waitv on the
// lock word and an exit word. 0 woken (or a value differed), -ETIMEDOUT, or -errno.
int pmll_wait_word_or_exit_word(uint32_t *word, uint32_t expected, uint32_t *exit_word, uint32_t exit_expected, int64_t deadline_ns);
static inline uint32_t *pmll_slot_exit_word(pmll_process_slot_t *s) { return &s->exit_word; }

// execvpe(3) (GNU): replaces the process with `file` found on PATH, environment `envp`.
int pmll_execvpe(const char *file, char *const _Nullable argv[_Nonnull], char *const _Nullable envp[_Nonnull]);

// For spawning from a process whose other threads spawn too (the test process): a child must
// inherit only its three standard descriptors. posix_spawn_file_actions_addclosefrom_np (GNU,
// glibc 2.34): the child closes every descriptor from `from` up before exec; 0 or an errno.
int pmll_spawn_actions_close_from(posix_spawn_file_actions_t *actions, int from);
// posix_spawn_file_actions_addchdir_np (GNU, glibc 2.29): the child starts in `directory`.
int pmll_spawn_actions_chdir(posix_spawn_file_actions_t *actions, const char *directory);
// pipe2(O_CLOEXEC) (GNU): close-on-exec from birth, with no window in which a fork of another
// thread inherits the ends. 0 or -errno.
int pmll_pipe_cloexec(int fds[_Nonnull 2]);

// A process that still maps the file `absolute_path` named before it was deleted (its
// /proc/PID/maps lists "PATH (deleted)"), or 0 if none this process may look at (other
// users' processes are invisible without privilege). `command` receives its comm.
pid_t pmll_find_deleted_mapping(const char *absolute_path, char *_Nullable command, size_t command_size);

// Whether an open file description holds an OFD lock on the INIT or SESSION byte of a file
// whose inode number is not `own_inode` (0: none is ours): every process attached to a pool,
// or attaching, holds one, so 0 means no other pool is open anywhere. From /proc/locks, which
// lists every OFD lock of the system, whoever's (reading it costs one small file, not one per
// process). -1 when it cannot be read.
int pmll_other_pool_open(uint64_t own_inode);
// One line of /proc/locks: 1 if it is such a lock.
int pmll_locks_line_is_other_pool(const char *line, uint64_t own_inode);
// How old a directory's mtime must be before a change in the same clock tick is ruled out:
// 50 ms on file systems that stamp times from the kernel's coarse clock at nanosecond
// resolution and move a file's ctime when it is renamed or linked (ext2/3/4, XFS, Btrfs,
// F2FS, tmpfs, ramfs), 2 s elsewhere (FAT's 2 s stamps, network file systems stamped by a
// server).
int64_t pmll_fs_timestamp_settle_ns(const char *path);

// MARK: - Clocks

int64_t pmll_clock_monotonic_ns(void);
int64_t pmll_clock_realtime_ns(void);

// MARK: - Futex (shared, not PRIVATE: the word lives in a file mapping)

// Sleeps while *word == expected, until woken or the absolute CLOCK_MONOTONIC deadline
// (deadline_ns < 0: no deadline). Returns 0 on wake, -ETIMEDOUT, -EAGAIN (value changed),
// -EINTR, or another -errno.
int pmll_futex_wait(uint32_t *word, uint32_t expected, int64_t deadline_ns);
// Wakes up to count sleepers (INT32_MAX: all). Returns how many woke, or -errno.
int pmll_futex_wake(uint32_t *word, int32_t count);

// One word of a vectored wait. Pool words are shared futexes; a process-private word (the
// waiter thread's doorbell, in ordinary memory) is marked so.
typedef struct {
    uint32_t *word;
    uint32_t expected;
    uint32_t process_private;
} pmll_futex_waiter_t;
#define PMLL_FUTEX_WAITV_MAX 128
// futex_waitv(2) (Linux 5.16): sleeps until any word differs from its expected value, one is
// woken, or the absolute CLOCK_MONOTONIC deadline (< 0: none). Returns the index of the word
// woken, -EAGAIN (a value already differed), -ETIMEDOUT, -EINTR, -ENOSYS (older kernel), or
// another -errno.
int pmll_futex_waitv(const pmll_futex_waiter_t *waiters, uint32_t count, int64_t deadline_ns);
// FUTEX_WAIT and FUTEX_WAKE on a process-private word (ordinary memory; a private wake
// reaches only private waiters, so both sides of a word must use these).
int pmll_futex_wait_private(uint32_t *word, uint32_t expected, int64_t deadline_ns);
int pmll_futex_wake_private(uint32_t *word, int32_t count);

// Words woken on demand (the queue turn words, the group-commit word): bit 31 says that a
// process sleeps on the word, set by the sleeper just before it sleeps, so that a bump with
// nobody asleep makes no system call (a FUTEX_WAKE on a shared word pins the word's page and
// hashes it: a system call per bump was the largest single cost of an uncontended queue
// operation). The other 31 bits count bumps.
#define PMLL_WAKEWORD_SLEEPERS 0x80000000u
// The value to sleep on, given `seen` (read before the sleeper checked its condition): `seen`
// with the bit set, returning 1; 0 if the word moved since (check the condition again).
static inline int pmll_wakeword_announce_sleeper(uint32_t *word, uint32_t seen, uint32_t *expected) {
    if (!(seen & PMLL_WAKEWORD_SLEEPERS)) {
        uint32_t e = seen;
        if (!__atomic_compare_exchange_n(word, &e, seen | PMLL_WAKEWORD_SLEEPERS, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return 0;
    }
    *expected = seen | PMLL_WAKEWORD_SLEEPERS;
    return 1;
}
// Counts a bump and clears the bit; wakes every sleeper if the bit was set. Returns 1 if it
// made the wake call, 0 if nobody had announced a sleep, or -errno.
int pmll_wakeword_bump(uint32_t *word);

// Names the calling thread (15 bytes at most), as `top -H` and /proc show it.
void pmll_thread_set_name(const char *name);

// The calling thread's kernel id (gettid(2)): the TID in /proc/PID/task/TID.
int32_t pmll_thread_id(void);

// MARK: - Process lifetime

// pidfd_open(2) (Linux 5.3): a descriptor that becomes readable when `pid` exits. -errno on failure.
int pmll_pidfd_open(int32_t pid);
// Drops the page-table entries of every loaded object's read-only segments (program text and
// constants) that hold no private copy of a page; the pages stay cached and fault back in on
// use. Its teardown, if the process is killed, is then shorter (`pmll` waiting for COMMAND).
// The segments are walked under the loader's lock, so none is unloaded meanwhile. The bytes of
// address space dropped, or -1 if /proc/self/pagemap cannot be read.
long pmll_drop_clean_file_mappings(void);
// Makes this process SIGKILL itself when `expected_parent` exits (at once if it already
// has): a thread waits on the parent's pidfd (polling getppid() where pidfds are missing).
// Not PR_SET_PDEATHSIG, which fires when the forking *thread* exits, and Swift parents fork
// from pool threads that come and go. Returns 0 or -errno.
int pmll_die_with_parent(int32_t expected_parent);

// MARK: - Open-file-description byte locks (released by the kernel when the process dies)

#define PMLL_RANGE_UNLOCK 0
#define PMLL_RANGE_SHARED 1
#define PMLL_RANGE_EXCLUSIVE 2
// 0 or -errno (-EAGAIN when wait == 0 and the byte is taken; -EINTR if interrupted).
int pmll_ofd_lock(int fd, int64_t offset, int kind, int wait);
// 1 if another open file description holds a conflicting lock on the byte, 0 if not, -errno.
int pmll_ofd_probe(int fd, int64_t offset, int kind);

// MARK: - Storage faults

// A SIGBUS inside a registered pool mapping (its file was truncated, or its storage failed)
// becomes one line on stderr, "pmll: pool 'PATH' lost its storage ...", and _exit(65); any
// other SIGBUS keeps its default action. Opt-in per process (the pmll command installs it);
// regions are registered by every Pool that maps a file. Returns 0 or -errno.
int pmll_fault_guard_install(void);
void pmll_fault_guard_register(const void *base, uint64_t length, const char *path);
void pmll_fault_guard_unregister(const void *base);

// MARK: - Mapping (libpmem on DAX, loaded with dlopen only there; mmap and msync elsewhere)

// Creates a new file of exactly `length` bytes (O_EXCL), reserved with fallocate, and maps it.
// Returns the address or NULL with *err_out = errno.
void *_Nullable pmll_pmem_create(const char *path, uint64_t length, uint32_t mode, uint64_t *mapped_length, int *is_pmem, int *err_out);
// Reserves `reserve` bytes of address space (no memory, no access) and maps the first
// `length` bytes of `fd` at its start, writable or read-only. The pool's mapping then grows in
// place (pmll_map_extend): its base never moves, so pointers into it stay valid. *sync says
// whether the mapping uses MAP_SYNC (DAX), to be passed to every pmll_map_extend.
void *_Nullable pmll_map_reserved(int fd, uint64_t length, uint64_t reserve, int writable, int *sync, int *is_pmem, int *err_out);
// Maps [from, to) of `fd` at base + from, inside a reservation made by pmll_map_reserved.
// 0 or -errno. After a failure *reservation_intact is 0 if the range may now hold another
// thread's mapping (Linux can unmap a MAP_FIXED target before failing): the reservation must
// then never be unmapped as a whole.
int pmll_map_extend(void *base, int fd, uint64_t from, uint64_t to, int writable, int sync, int *reservation_intact);
// Maps [from, to) of `fd` at base + from privately (copy-on-write) and writable: what this
// process then writes there stays in its own memory and never reaches the file, which may be
// open read-only. pmll_map_extend(..., writable 0, ...) maps the range shared again. 0 or -errno,
// *reservation_intact as for pmll_map_extend.
int pmll_map_private(void *base, int fd, uint64_t from, uint64_t to, int *reservation_intact);
// Starts reading [addr, addr + length) of a pool mapping into the page cache (4 KiB folios),
// before a scan: pool mappings are MADV_RANDOM, so a fault reads only its own page.
void pmll_prefetch(const void *addr, uint64_t length);
// 1 if `fd` is on a file system that lives only in memory (tmpfs, ramfs): there msync has
// nothing to write and a barrier orders nothing another process could not already see.
int pmll_fs_is_volatile(int fd);
// Releases a whole reservation (and the mappings in it).
int pmll_pmem_unmap(void *addr, uint64_t length);
// Reserves the blocks of [offset, offset + length) of `fd` (fallocate; the file grows if it
// is shorter) and makes the new size durable (fdatasync). 0 or -errno (-ENOSPC: no room).
int pmll_file_reserve(int fd, uint64_t offset, uint64_t length);
// Gives the blocks of [offset, offset + length) back to the file system (punches a hole; the
// size stays): the range then reads as zeros. 0 or -errno (-EOPNOTSUPP: no holes here).
int pmll_file_release(int fd, uint64_t offset, uint64_t length);
// Allocates the holes of [offset, offset + length), inside the file (size and data stay).
// 0 or -errno (-ENOSPC: no room).
int pmll_fill_range(int fd, uint64_t offset, uint64_t length);
// Maps every page of [addr, addr + length) (page aligned) for writing in one system call,
// instead of one fault per page as they are first written. Best effort: without
// MADV_POPULATE_WRITE (kernels before 5.14) the pages fault in as before.
void pmll_populate_for_write(void *addr, size_t length);
void pmll_pmem_persist(const void *addr, size_t length);   // cache flush only (real pmem)
int pmll_pmem_msync(const void *addr, size_t length);      // page-rounded msync (other files)
// Durable barriers (persist or msync calls) made by this process so far.
uint64_t pmll_barrier_count(void);
// How pools are mapped from now on ($PMLL_MAP): libpmem on DAX only (auto), always, or never.
#define PMLL_MAP_AUTO 0
#define PMLL_MAP_LIBPMEM 1
#define PMLL_MAP_MMAP 2
void pmll_pmem_set_mapping(int mode);

// MARK: - Unnamed files (O_TMPFILE) for staging

// An unnamed regular file in dirfd's filesystem, open for writing: fd or -errno.
int pmll_open_unnamed(int dirfd, unsigned mode);
// The errno (positive) means this filesystem or kernel has no O_TMPFILE.
int pmll_unnamed_unsupported(int err);
// Gives an unnamed file the name dirfd/name, through /proc/self/fd (linkat's AT_EMPTY_PATH
// needs CAP_DAC_READ_SEARCH). 0 or -errno.
int pmll_link_unnamed(int fd, int dirfd, const char *name);
// An O_PATH descriptor of dirfd/name itself (not followed): it keeps the inode alive, so
// removing the last name frees nothing until it is closed. fd or -errno.
int pmll_open_path(int dirfd, const char *name);
// syncfs(2): writes back and commits everything of fd's filesystem. 0 or -errno.
int pmll_syncfs(int fd);
// renameat2(RENAME_EXCHANGE) of dirfd/a and dirfd/b: both names stay, their files swap
// atomically. 0 or -errno.
int pmll_rename_exchange(int dirfd, const char *a, const char *b);
// The errno (positive) means this filesystem or kernel cannot exchange names.
int pmll_exchange_unsupported(int err);
// 1 if fd's filesystem is ext4 without a journal, 0 if not or if /sys cannot tell. Such an
// ext4 passes over every inode freed in the last 60-360 s when it allocates one
// (recently_deleted), under the directory lock for a create by name.
int pmll_ext4_without_journal(int fd);

// MARK: - io_uring (liburing) for file batches

typedef struct pmll_uring pmll_uring_t;

// Sets up a ring with `files` fixed-file slots (a sparse table we fill ourselves: liburing
// 2.3's IORING_FILE_INDEX_ALLOC is broken) and raises the io-wq worker limit. 0 or -errno
// (-EPERM/-ENOSYS when io_uring is disabled or filtered; -EINVAL on old kernels).
int pmll_uring_create(unsigned entries, unsigned files, pmll_uring_t *_Nullable *_Nonnull out);
void pmll_uring_destroy(pmll_uring_t *ring);
// 0 if every opcode the batches need is supported, else -EOPNOTSUPP.
int pmll_uring_probe_ops(pmll_uring_t *ring);

// Writes n new files, each as one linked chain on its own fixed slot:
// openat(dirfd, name, O_CREAT|O_EXCL|O_WRONLY, mode) -> write -> fsync -> close (unsynced
// creates run inline on threads, where the ring only added hand-offs).
// results[i] = 0 or -errno of the first failing step (a failed write cancels the rest of its
// chain; its slot is closed here). Returns 0, or -errno if submitting itself failed (then the
// caller falls back to plain syscalls).
int pmll_uring_write_files(pmll_uring_t *ring, int n, const int *dirfds, const char *_Nonnull const *_Nonnull names,
                           const void *_Nonnull const *_Nonnull datas, const size_t *lengths, const unsigned *modes,
                           int *results);
// Durability of staged files: each added descriptor gets a linked fsync -> close on the
// ring, run by io-wq workers while the caller's threads go on staging the next files (the
// opens, writes, links and renames are CPU work in the kernel that io-wq runs no faster than
// threads, so the caller does them). pmll_uring_stage_finish reaps everything, closes every
// descriptor that was added (whatever happened) and frees the stage.
typedef struct pmll_stage pmll_stage_t;
pmll_stage_t *_Nullable pmll_uring_stage_begin(pmll_uring_t *ring, int n);
// File i (0 <= i < n). 0 or -errno (the ring refused: the stage must still be finished).
int pmll_uring_stage_add(pmll_stage_t *stage, int i, int fd);
int pmll_uring_stage_submit(pmll_stage_t *stage);
// results[i] = 0 or -errno for each added file (0 for files never added). Returns 0, or -errno
// if submitting or reaping failed (then the caller falls back to plain syscalls).
int pmll_uring_stage_finish(pmll_stage_t *stage, int *results);
// fsync of n descriptors in parallel (directories after renames). Same return convention.
int pmll_uring_fsync_fds(pmll_uring_t *ring, int n, const int *fds, int *results);
// unlinkat(dirfds[i], names[i], 0) for n names in parallel (io-wq workers): freeing an inode
// is the slow part on a journaling filesystem and runs outside the directory lock, so the
// evictions overlap. Same return convention.
int pmll_uring_unlink(pmll_uring_t *ring, int n, const int *dirfds, const char *_Nonnull const *_Nonnull names, int *results);

// MARK: - Misc

uint32_t pmll_crc32c(uint32_t crc, const void *_Nullable data, size_t length);
uint32_t pmll_crc32c_software(uint32_t crc, const void *_Nullable data, size_t length);
// An audit slot's checksum: CRC32C over `seq` (8 bytes, little-endian), the 24 bytes from `pid`
// to `text_length`, and the 16 + text_length bytes from `comm` (the checksum field left out).
uint32_t pmll_audit_slot_checksum(const pmll_audit_slot_t *_Nonnull slot, uint64_t seq);
// The same checksum for the record an appender is writing, from the fields' values (little-endian
// `comm` words) and its text: loading back fields just stored would wait for the stores.
uint32_t pmll_audit_record_checksum(uint64_t seq, int32_t pid, uint32_t uid, uint16_t event, uint16_t outcome, int64_t time_ns,
                                    uint64_t comm_low, uint64_t comm_high, const void *_Nullable text, size_t text_length);
// renameat2(RENAME_NOREPLACE) of old to new in the same directory; -EEXIST when new exists.
int pmll_rename_noreplace(const char *oldpath, const char *newpath);

// Touches every page of [p, p + n) for reading, so that later copies of it take no page
// faults (a backup copies the mapping while writers wait).
static inline uint64_t pmll_prefault(const void *p, uint64_t n) {
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i += 4096) sum += __atomic_load_n((const unsigned char *)p + i, __ATOMIC_RELAXED);
    return sum;
}

// libsodium (sign.c): 0 / -1 for init and hashing; 1 if the Ed25519 signature is valid.
int pmll_sign_init(void);
int pmll_ed25519_verify(const uint8_t *signature, const uint8_t *message, uint64_t length, const uint8_t *public_key);  // 64- and 32-byte arrays
int pmll_blake2b512(uint8_t *out, const uint8_t *message, uint64_t length);  // out: 64 bytes
// The audit chain: BLAKE2b-256 of previous (32 bytes) followed by message.
int pmll_audit_chain(uint8_t *out, const uint8_t *previous, const uint8_t *message, uint64_t length);
// One record line of the audit files (auditline.c; AuditLine.swift has the format): the body
// from slot `s` as record `seq`, chained to `previous` (32 bytes; the new hash goes to `hash`),
// then `,"hash":"HEX"}` and a newline. `out` has room for PMLL_AUDIT_LINE_MAX bytes; the event
// and outcome names are cut at PMLL_AUDIT_NAME_MAX bytes. `numbers`: the slot's text may hold
// numbers (PMLL_AUDIT_NUMBER_MARK and 8 bytes), written in decimal. Returns the length.
#define PMLL_AUDIT_NAME_MAX 64u
#define PMLL_AUDIT_LINE_MAX 4096u
size_t pmll_audit_format_line(char *out, const pmll_audit_slot_t *s, uint64_t seq, const char *event, size_t event_length,
                              const char *outcome, size_t outcome_length, const uint8_t *previous, uint8_t *hash, int numbers);
// A slot's text as the record's object (its numbers in decimal), unescaped, at out (room for
// PMLL_AUDIT_LINE_MAX bytes); returns the length. For the records the drain writes in Swift.
size_t pmll_audit_object_text(char *out, const pmll_audit_slot_t *s, int numbers);
// Writes `,"hash":"HEX"}` and a newline at p (76 bytes); returns the end.
char *pmll_audit_hash_tail(char *p, const uint8_t *hash);
// Ed25519 (audit checkpoints): a new key pair (public 32, secret 64 bytes); a detached signature (64).
int pmll_ed25519_keypair(uint8_t *public_key, uint8_t *secret_key);
int pmll_ed25519_sign(uint8_t *signature, const uint8_t *message, uint64_t length, const uint8_t *secret_key);

#pragma GCC visibility pop
#pragma clang assume_nonnull end

#ifdef __cplusplus
}
#endif
#endif
