import CPMLL

/// What happens when a pool's mapping faults: its file was truncated while mapped (`truncate
/// -s 4096 pool`), or its storage failed to provide a page. Any process that maps a file
/// meets this as SIGBUS (so do LMDB's and libpmemobj's users); PMLL cannot make the bytes
/// reappear, and unwinding from inside a signal handler through Swift frames is undefined.
///
/// By default the library leaves SIGBUS alone: the process dies of it, as with any mapped
/// file, and the next process to open the pool finds it truncated (`corruptPool`, exit 65).
/// A process that would rather report it calls ``exitOnFault()`` once: a SIGBUS inside any
/// pool it has mapped then prints `pmll: pool 'PATH' lost its storage while in use (...)` on
/// stderr and exits with status 65; a SIGBUS elsewhere keeps its default action. The `pmll`
/// command does this. Sparse pool files are refused before they can fault on a full file
/// system: their blocks are allocated when the pool is opened, or ``PMLLError/noSpace(path:reason:)``.
public enum StorageFaults {
    /// Installs the SIGBUS handler described above (process-wide; idempotent).
    public static func exitOnFault() {
        _ = pmll_fault_guard_install()
    }
}
