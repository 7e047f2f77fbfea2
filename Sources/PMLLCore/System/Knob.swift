#if canImport(Glibc)
import Glibc
#endif

/// Every environment variable the library reads, in one place (the table in Docs/CLI.md,
/// "Environment", is this list). Each is read where it takes effect, once per process for
/// those that pick a mechanism.
package enum Knob: String, CaseIterable, Sendable {
    /// The pool when the caller names none.
    case pool = "PMLL_POOL"
    /// `uring` or `syscalls`: the file-batch backend (default: io_uring where it works).
    case ioBackend = "PMLL_IO_BACKEND"
    /// `named`, `unnamed`, `no-exchange` (comma-separated): how batches create and place files.
    case staging = "PMLL_STAGING"
    /// `files` or `filesystem`: fsync each file, or one syncfs per filesystem, before a batch commits.
    case batchSync = "PMLL_BATCH_SYNC"
    /// `NAME[:N]`: SIGKILL this process at the N-th hit of crash point NAME (crash suite).
    case crashAt = "PMLL_CRASH_AT"
    /// `NAME[:N]`: stop this process (SIGSTOP) at the N-th hit of crash point NAME, for a test
    /// to look at what it holds there and then let it go on (SIGCONT).
    case pauseAt = "PMLL_PAUSE_AT"
    /// A file to append the name of every crash point hit to (crash suite, to count them).
    case crashTrace = "PMLL_CRASH_TRACE"
    /// A file that receives every persisted range: the crash suite's power-failure model.
    case powerShadow = "PMLL_POWER_SHADOW"
    /// A persist site to skip (crash-suite self-test: the suite must then find a violation).
    case testDropPersist = "PMLL_TEST_DROP_PERSIST"
    /// A file read instead of /proc/sys/kernel/random/boot_id (tests that simulate a reboot).
    case bootIDFile = "PMLL_BOOT_ID_FILE"
    /// `off`: this process makes no redo log for a pool that has none (its commits in
    /// parallel keep their undo logs and two barriers; a pool that has one is always used
    /// through it), for tests of the undo-log path and pools older builds must still open.
    /// A number: the ring's bytes when this process makes one (tests that make it wrap).
    case redoLog = "PMLL_REDO_LOG"
    /// `yield` or `sleep`: how this process's redo-log flushers wait for their group, instead of
    /// yielding until a yield is found slow (other work runnable) and sleeping for a second
    /// after that (tests of either path; a machine always busy with other work).
    case redoGather = "PMLL_REDO_GATHER"
    /// `auto` (default), `libpmem` or `mmap`: map pools through libpmem on DAX only, always, or never.
    case mapping = "PMLL_MAP"

    /// The variable's value, or nil when unset.
    package var value: String? { getenv(rawValue).map { String(cString: $0) } }
}
