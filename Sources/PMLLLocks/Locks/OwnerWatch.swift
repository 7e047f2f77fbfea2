import CPMLL
#if canImport(Glibc)
import Glibc
#endif
package import PMLLCore

/// Event-driven death detection for a waiter: a pidfd of the lock's owner, slept on together
/// with the word (``pmll_wait_word_or_exit``), so a SIGKILLed owner wakes its waiters when the
/// kernel has torn the process down instead of at the next owner check.
///
/// The pidfd is only a wake-up hint; the OFD liveness byte stays the authority. It is opened
/// only for an owner that has already kept the lock a whole owner-check interval (opening
/// costs a few syscalls: never on a short contended wait), and only if the PID still names
/// the process that registered (its start time), so PID reuse can at worst cost a wake that
/// the probe then dismisses. Owners in another PID namespace, and kernels without
/// IORING_OP_FUTEX_WAIT, keep the periodic probe.
package struct OwnerWatch {
    private var owner: UInt32 = 0
    private var pidfd: Int32 = -1

    package init() {}

    /// Watches `owner` from now on (closing the watch of a previous one).
    package mutating func watch(_ owner: UInt32, processes: ProcessTable) {
        guard owner != self.owner else { return }
        close()
        self.owner = owner
        guard pmll_owner_watch_supported() != 0,
              let id = processes.identity(of: OwnerToken(rawValue: owner)) else { return }
        let fd = pmll_pidfd_open_checked(id.pid, id.startTime)
        if fd >= 0 { pidfd = fd }
    }

    /// True while `owner`'s exit wakes the sleeper: the periodic probe is then only a fallback
    /// (for a watch that cannot fire, e.g. a PID of another namespace) and can be rarer.
    package func covers(_ owner: UInt32) -> Bool { pidfd >= 0 && owner == self.owner }

    /// Sleeps on `word` or the watched owner's exit. True if the owner exited (probe now).
    package mutating func sleep(on word: UnsafeMutablePointer<UInt32>, expected: UInt32, until: Int64, owner: UInt32) -> (timedOut: Bool, ownerExited: Bool) {
        if pidfd >= 0 && owner == self.owner {
            let rc = pmll_wait_word_or_exit(word, expected, until, pidfd)
            if rc != -ENOSYS { return (rc == -ETIMEDOUT, rc == 1) }
            close()
        }
        return (pmll_futex_wait(word, expected, until) == -ETIMEDOUT, false)
    }

    /// Closes the descriptor without forgetting it (for a wait's final, non-mutating `end`).
    package func closeDescriptor() {
        if pidfd >= 0 { pmll_fd_close(pidfd) }
    }

    package mutating func close() {
        if pidfd >= 0 { pmll_fd_close(pidfd) }
        pidfd = -1
        owner = 0
    }
}
