package import CoreMetrics
import Synchronization

/// What PMLL reports through swift-metrics, so that a program that bootstraps a metrics
/// backend (before it opens a pool) sees the library's figures with no code of its own.
/// Handles used on frequent paths are made once per pool; rare events (a death, a timeout)
/// make theirs when they happen, with the lock's name as a dimension. Nothing is recorded on
/// the uncontended lock path: only a wait that had to sleep or spin is timed.
///
/// These are this process's own events. The pool's statistics, counted by every process,
/// are `pmll metrics` (Prometheus text) and `pmll status`.
package final class Telemetry: Sendable {
    package let commits = Counter(label: "pmll_store_commits_total")
    package let commitDuration = Timer(label: "pmll_store_commit_seconds")
    package let conflicts = Counter(label: "pmll_store_conflicts_total")
    package let rollbacks = Counter(label: "pmll_store_rollbacks_total")
    package let lockWait = Timer(label: "pmll_lock_contended_wait_seconds")
    package let checks = Counter(label: "pmll_check_runs_total")
    package let checkFailures = Counter(label: "pmll_check_failures_total")
    package let checkDuration = Timer(label: "pmll_check_seconds")
    private let queues = Mutex<[String: QueueTelemetry]>([:])

    package init() {}

    /// The handles of the queue `name` (made on first use).
    package func queue(_ name: String) -> QueueTelemetry {
        queues.withLock { queues in
            if let existing = queues[name] { return existing }
            let made = QueueTelemetry(name: name)
            queues[name] = made
            return made
        }
    }

    package static func ownerDeath(lock: String) {
        ownerDeathCounter(lock).increment()
    }

    /// The counter of ``ownerDeath(lock:)``, made now, for a takeover to count with later:
    /// its first making in a process took 60-190 µs (the metrics system's first use), and
    /// finding it again at the takeover about 10 µs (the name's String, a lock, a lookup).
    package static func preparedOwnerDeath(lock: String) -> OwnerDeathCount {
        OwnerDeathCount(counter: ownerDeathCounter(lock))
    }

    package struct OwnerDeathCount: Sendable {
        let counter: Counter
        package func increment() { counter.increment() }
    }

    /// Owner-death counters by lock, made once: making one through the metrics system took
    /// about 20 µs of a takeover even after the first (a lock and a factory call each time).
    private static let ownerDeathCounters = Mutex<[String: Counter]>([:])

    private static func ownerDeathCounter(_ lock: String) -> Counter {
        ownerDeathCounters.withLock { counters in
            if let made = counters[lock] { return made }
            let made = Counter(label: "pmll_lock_owner_deaths_total", dimensions: [("lock", lock)])
            counters[lock] = made
            return made
        }
    }

    package static func timeout(lock: String) {
        Counter(label: "pmll_lock_timeouts_total", dimensions: [("lock", lock)]).increment()
    }
}

package final class QueueTelemetry: Sendable {
    package let completed: Counter
    package let failed: Counter
    package let retries: Counter
    package let waitDuration: Timer
    package let runDuration: Timer

    init(name: String) {
        let queue = [("queue", name)]
        completed = Counter(label: "pmll_queue_completed_total", dimensions: queue)
        failed = Counter(label: "pmll_queue_failed_total", dimensions: queue)
        retries = Counter(label: "pmll_queue_retries_total", dimensions: queue)
        waitDuration = Timer(label: "pmll_queue_wait_seconds", dimensions: queue)
        runDuration = Timer(label: "pmll_queue_run_seconds", dimensions: queue)
    }
}
