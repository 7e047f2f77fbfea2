import CPMLL
import Synchronization

/// Descriptors of owner watches whose wait is over, closed later rather than on the way into
/// the critical section. Closing the `/proc` descriptors of an owner that just died (its task
/// directory, its threads' `stat` and `status`) took 40–60 µs of a 0.5 ms takeover, measured
/// between the takeover and the body; the same close by the next waiter that starts a watch
/// (it is waiting anyway) costs nobody's latency. At most ``limit`` ended watches wait (1 + 16
/// descriptors each); one more closes the oldest at once.
enum EndedWatches {
    static let limit = 2

    private struct Ended: @unchecked Sendable {
        let pidfd: Int32
        let threads: OpaquePointer?
    }

    private static let pending = Mutex<[Ended]>([])

    static func add(pidfd: Int32, threads: OpaquePointer?) {
        let overflow = pending.withLock { list -> Ended? in
            list.append(Ended(pidfd: pidfd, threads: threads))
            return list.count > limit ? list.removeFirst() : nil
        }
        if let overflow { close(overflow) }
    }

    /// Closes every ended watch's descriptors (a waiter about to start a watch).
    static func closeAll() {
        let all = pending.withLock { list -> [Ended] in
            defer { list.removeAll(keepingCapacity: true) }
            return list
        }
        for ended in all { close(ended) }
    }

    private static func close(_ ended: Ended) {
        if ended.pidfd >= 0 { pmll_fd_close(ended.pidfd) }
        pmll_exit_check_close(ended.threads)
    }
}
