package import CPMLL
import PMLLCore
import PMLLLocks
import PMLLStore

/// A queue's statistics as `pmll queue show` and `pmll status` report them.
public struct QueueStats: Codable, Sendable, Equatable {
    public let name: String
    public let persistent: Bool
    public let completed: UInt64
    public let failed: UInt64
    public let retried: UInt64
    public let abandoned: UInt64
    public let recovered: UInt64
    /// Operations submitted and not finished (queue depth, including the running one).
    public let pending: UInt64
    public let nextTicket: UInt64
    public let serving: UInt64
    public let meanWaitNanoseconds: UInt64
    public let maxWaitNanoseconds: UInt64
    public let meanRunNanoseconds: UInt64
    public let maxRunNanoseconds: UInt64
    /// Bucket i counts operations whose wait (submit → start) was in [2^i, 2^(i+1)) µs
    /// (bucket 0 also counts everything under 1 µs).
    public let waitHistogram: [UInt64]
    /// Same for run time (start → finish).
    public let runHistogram: [UInt64]

    /// For another backend's queues (etcd), which count the same things their own way.
    package init(name: String, persistent: Bool, completed: UInt64, failed: UInt64, retried: UInt64, abandoned: UInt64,
                 recovered: UInt64, pending: UInt64, nextTicket: UInt64, serving: UInt64,
                 meanWaitNanoseconds: UInt64, maxWaitNanoseconds: UInt64, meanRunNanoseconds: UInt64, maxRunNanoseconds: UInt64,
                 waitHistogram: [UInt64], runHistogram: [UInt64]) {
        self.name = name
        self.persistent = persistent
        self.completed = completed
        self.failed = failed
        self.retried = retried
        self.abandoned = abandoned
        self.recovered = recovered
        self.pending = pending
        self.nextTicket = nextTicket
        self.serving = serving
        self.meanWaitNanoseconds = meanWaitNanoseconds
        self.maxWaitNanoseconds = maxWaitNanoseconds
        self.meanRunNanoseconds = meanRunNanoseconds
        self.maxRunNanoseconds = maxRunNanoseconds
        self.waitHistogram = waitHistogram
        self.runHistogram = runHistogram
    }
}

package enum QueueStatistics {
    package static let bucketCount = Int(PMLL_HISTOGRAM_BUCKETS)

    package static func bucket(_ ns: UInt64) -> Int {
        let us = ns / 1000
        return us == 0 ? 0 : min(Int(PMLL_HISTOGRAM_BUCKETS) - 1, 63 - us.leadingZeroBitCount)
    }

    package static func record(_ q: UnsafeMutablePointer<pmll_queue_head_t>, wait: UInt64, run: UInt64) {
        pmll_add64(&q.pointee.total_wait_ns, wait)
        pmll_add64(&q.pointee.total_run_ns, run)
        if wait > pmll_load64(&q.pointee.max_wait_ns) { pmll_store64(&q.pointee.max_wait_ns, wait) }
        if run > pmll_load64(&q.pointee.max_run_ns) { pmll_store64(&q.pointee.max_run_ns, run) }
        withUnsafeMutableBytes(of: &q.pointee.wait_histogram) { raw in
            _ = pmll_add64(raw.baseAddress!.assumingMemoryBound(to: UInt64.self) + bucket(wait), 1)
        }
        withUnsafeMutableBytes(of: &q.pointee.run_histogram) { raw in
            _ = pmll_add64(raw.baseAddress!.assumingMemoryBound(to: UInt64.self) + bucket(run), 1)
        }
    }

    package static func snapshot(_ q: UnsafeMutablePointer<pmll_queue_head_t>) -> QueueStats {
        let completed = pmll_load64(&q.pointee.completed), failed = pmll_load64(&q.pointee.failed)
        let finished = max(1, completed.saturatingAdd(failed))
        let next = pmll_load64_acquire(&q.pointee.next_ticket), serving = pmll_load64_acquire(&q.pointee.serving)
        func histogram<T>(_ tuple: T) -> [UInt64] { withUnsafeBytes(of: tuple) { Array($0.bindMemory(to: UInt64.self)) } }
        return QueueStats(
            name: String(fixedCString: q.pointee.name), persistent: q.pointee.flags & PMLL_QUEUE_FLAG_PERSISTENT != 0,
            completed: completed, failed: failed, retried: pmll_load64(&q.pointee.retried),
            abandoned: pmll_load64(&q.pointee.abandoned), recovered: pmll_load64(&q.pointee.recovered),
            pending: next > serving ? next - serving : 0, nextTicket: next, serving: serving,
            meanWaitNanoseconds: pmll_load64(&q.pointee.total_wait_ns) / finished, maxWaitNanoseconds: pmll_load64(&q.pointee.max_wait_ns),
            meanRunNanoseconds: pmll_load64(&q.pointee.total_run_ns) / finished, maxRunNanoseconds: pmll_load64(&q.pointee.max_run_ns),
            waitHistogram: histogram(q.pointee.wait_histogram), runHistogram: histogram(q.pointee.run_histogram))
    }
}
