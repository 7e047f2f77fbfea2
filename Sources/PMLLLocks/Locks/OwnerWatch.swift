import CPMLL
#if canImport(Glibc)
import Glibc
#endif
package import PMLLCore

/// Event-driven death detection for a waiter (LockProtocol.md, "Takeover at the kernel's pace").
/// Two events, both only wake-ups:
///
/// - The owner's **exit word** (in its process slot): the kernel marks it at the *start* of the
///   owner's exit, from the robust list of the owner's exit-watch thread (deathwatch.c). The
///   waiter sleeps on it and the lock word at once (`futex_waitv`). Woken by it, the waiter
///   takes over only once `/proc` shows that *every* thread of the owner has begun to exit
///   (none can run user code again), without waiting for the kernel to tear the owner down.
/// - A **pidfd** of the owner (io_uring `FUTEX_WAIT` + `POLL_ADD`), when the owner has no exit
///   word: it fires after the teardown, when the OFD byte is released too.
///
/// The watch starts only for an owner that has kept the lock a whole owner-check interval, and
/// only if the PID still names the registered process (its start time); the periodic OFD probe
/// stays as the fallback (owners in another PID namespace, kernels without the opcodes).
package struct OwnerWatch {
    private var owner: UInt32 = 0
    private var pidfd: Int32 = -1
    private var exitWord: UnsafeMutablePointer<UInt32>?
    private var pid: Int32 = 0
    private var startTime: UInt64 = 0
    private var exitChecks = 0
    /// The CPU the owner's exit-watch thread is pinned to (where its exit will run), or -1.
    private var exitCPU: Int32 = -1
    /// The owner's threads in `/proc`, opened when the watch starts (the owner alive, this
    /// waiter idle) so that the check at its death only reads.
    private var threads: OpaquePointer?

    static let tidMask: UInt32 = 0x3FFF_FFFF
    static let ownerDied: UInt32 = 0x4000_0000
    static let waiters: UInt32 = 0x8000_0000
    static let exitChecksBeforeFallback = 50

    package init() {}

    /// Watches `owner` from now on (closing the watch of a previous one). True if a new
    /// watch began: the caller may prepare the rest of a takeover now, while it is idle.
    package mutating func watch(_ owner: UInt32, processes: ProcessTable) -> Bool {
        guard owner != self.owner else { return false }
        close()
        pmll_exit_check_close_ended()
        self.owner = owner
        let token = OwnerToken(rawValue: owner)
        guard let id = processes.identity(of: token) else { return false }
        pid = id.pid
        startTime = id.startTime
        if let word = processes.exitWord(of: token), case let tid = Int32(bitPattern: pmll_load32(word) & Self.tidMask), tid != 0 {
            exitWord = word
            threads = pmll_exit_check_open(id.pid, id.startTime, tid)
            exitCPU = pmll_thread_cpu(id.pid, tid)
            return true
        }
        guard pmll_owner_watch_supported() != 0 else { return true }
        let fd = pmll_pidfd_open_checked(id.pid, id.startTime)
        if fd >= 0 { pidfd = fd }
        return true
    }

    /// True while `owner`'s exit wakes the sleeper: the periodic probe is then only a fallback
    /// (for a watch that cannot fire, e.g. a PID of another namespace) and can be rarer.
    package func covers(_ owner: UInt32) -> Bool { owner == self.owner && (pidfd >= 0 || exitWord != nil) }

    /// Sleeps on `word` or the watched owner's exit. `ownerExited`: probe (or verify) now.
    package mutating func sleep(on word: UnsafeMutablePointer<UInt32>, expected: UInt32, until: Int64, owner: UInt32) -> (timedOut: Bool, ownerExited: Bool) {
        if owner == self.owner, let exitWord {
            var seen = pmll_load32(exitWord)
            if seen & Self.ownerDied != 0 {
                // The exit-watch thread began to exit. The owner's other threads follow within
                // microseconds unless they wait for a CPU: check again every 100 µs, while
                // also sleeping on its pidfd (which fires after the teardown in any case).
                // An owner that keeps running (its exit-watch thread went away in an exec) is
                // left to the pidfd after 5 ms of checks.
                if exitChecks == 0 {
                    exitChecks = 1
                    return (false, true)
                }
                if pidfd < 0 && pmll_owner_watch_supported() != 0 {
                    let fd = pmll_pidfd_open_checked(pid, startTime)
                    if fd >= 0 { pidfd = fd }
                }
                let checking = exitChecks < Self.exitChecksBeforeFallback
                let wake = checking ? min(until, Clock.monotonicNanoseconds + 100_000) : until
                if checking { exitChecks += 1 }
                if pidfd >= 0 {
                    let rc = pmll_wait_word_or_exit(word, expected, wake, pidfd)
                    if rc != -ENOSYS { return (rc == -ETIMEDOUT && wake == until, rc == 1 || (checking && rc == -ETIMEDOUT)) }
                }
                let rc = pmll_futex_wait(word, expected, wake)
                return (rc == -ETIMEDOUT && wake == until, checking)
            }
            if seen & Self.tidMask != 0 {
                if seen & Self.waiters == 0 && pmll_cas32(exitWord, &seen, seen | Self.waiters) == 0 {
                    return (false, seen & Self.ownerDied != 0)
                }
                // Asleep off the CPU where the owner's exit will run: woken by that exit, this
                // thread is then placed on another CPU, if one is idle, and not queued behind
                // the owner's teardown (Benchmarks.md, "pattern 2").
                pmll_thread_step_off(exitCPU)
                let rc = pmll_wait_word_or_exit_word(word, expected, exitWord, seen | Self.waiters, until)
                let died = pmll_load32(exitWord) & Self.ownerDied != 0
                // The kernel woke one of us: wake the others sleeping on this owner's exit.
                if died { _ = pmll_futex_wake(exitWord, Int32.max) }
                return (rc == -ETIMEDOUT, died)
            }
        }
        if pidfd >= 0 && owner == self.owner {
            let rc = pmll_wait_word_or_exit(word, expected, until, pidfd)
            if rc != -ENOSYS { return (rc == -ETIMEDOUT, rc == 1) }
            close()
        }
        return (pmll_futex_wait(word, expected, until) == -ETIMEDOUT, false)
    }

    /// After the exit word fired: true if no thread of the watched owner can run user code any
    /// more, so its lock may be taken over before the kernel has released its files.
    package func ownerCannotRun(_ owner: UInt32, processes: ProcessTable) -> Bool {
        guard owner == self.owner, let exitWord, pmll_load32(exitWord) & Self.ownerDied != 0,
              let id = processes.identity(of: OwnerToken(rawValue: owner)), id.pid == pid, id.startTime == startTime,
              let threads else { return false }
        return pmll_exit_check_run(threads, 1) == 1
    }

    /// Ends the watch for a wait that is over (non-mutating: the wait's final `end`). The
    /// descriptors are closed later, by the next watch this process starts (at most two ended
    /// watches wait): closing them took 40-50 µs between a takeover and the critical section.
    package func closeDescriptor() {
        pmll_exit_check_end(threads, pidfd)
    }

    package mutating func close() {
        if pidfd >= 0 { pmll_fd_close(pidfd) }
        pidfd = -1
        pmll_exit_check_close(threads)
        threads = nil
        exitWord = nil
        exitChecks = 0
        exitCPU = -1
        owner = 0
    }
}
