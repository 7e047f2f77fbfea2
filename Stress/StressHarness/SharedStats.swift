import Foundation
import PMLLStressSupport

/// Counters every worker publishes in a small shared file, so
/// the supervisor can show progress and sum up, including what killed workers had done.
/// One 4 KiB slot per worker id.
/// Slot words: 0 pid, 1 errors, 2 owner deaths seen, 3 repairs, from 4 operations by kind,
/// 15 shared readers that saw a half-written pair, then 32 log2-microsecond latency buckets
/// per kind (from word 16).
final class SharedStats: @unchecked Sendable {
    static let kinds = ["lock", "tx", "queue", "batch", "txfree", "blob", "names", "shared"]
    static let errorsWord = 1, deathsWord = 2, repairsWord = 3, tornReadsWord = 15
    static func operationWord(_ kind: Int) -> Int { 4 + kind }
    static let histogramWord = 16
    static let maxWorkers = 64   // one slot per worker position (--processes is at most 64)
    static let buckets = 32
    static let slotBytes = 4096
    let file: SharedFile
    let base: UnsafeMutablePointer<UInt64>

    init(path: String, create: Bool) throws {
        file = try SharedFile(path, size: 4096 + Self.slotBytes * Self.maxWorkers, create: create)
        base = file.base.assumingMemoryBound(to: UInt64.self)
    }

    func slot(_ id: Int) -> UnsafeMutablePointer<UInt64> { base + (4096 + id * Self.slotBytes) / 8 }

    func add(_ id: Int, _ word: Int, _ n: UInt64 = 1) { slot(id)[word] &+= n }   // only the worker writes its slot

    func latency(_ id: Int, kind: Int, nanoseconds: Int64) {
        let us = max(1, nanoseconds / 1000)
        let bucket = min(Self.buckets - 1, 63 - UInt64(us).leadingZeroBitCount)
        slot(id)[Self.histogramWord + kind * Self.buckets + bucket] &+= 1
    }

    /// Adds a dead worker's slot to `retired` and clears the slot for its replacement.
    func retire(_ id: Int, into retired: inout Totals) {
        accumulate(id, into: &retired)
        UnsafeMutableRawPointer(slot(id)).initializeMemory(as: UInt8.self, repeating: 0, count: Self.slotBytes)
    }

    private func accumulate(_ id: Int, into t: inout Totals) {
        let s = slot(id)
        for k in Self.kinds.indices { t.operations[k] += s[Self.operationWord(k)] }
        t.errors += s[Self.errorsWord]
        t.ownerDeaths += s[Self.deathsWord]
        t.repairs += s[Self.repairsWord]
        t.tornReads += s[Self.tornReadsWord]
        for k in Self.kinds.indices { for b in 0..<Self.buckets { t.histograms[k][b] += s[Self.histogramWord + k * Self.buckets + b] } }
    }

    struct Totals {
        var operations = [UInt64](repeating: 0, count: SharedStats.kinds.count)
        var errors: UInt64 = 0
        var ownerDeaths: UInt64 = 0
        var repairs: UInt64 = 0
        /// Shared holders of `stress/rw` that saw its pair half written with no owner death reported.
        var tornReads: UInt64 = 0
        var histograms = [[UInt64]](repeating: [UInt64](repeating: 0, count: SharedStats.buckets), count: SharedStats.kinds.count)
        var total: UInt64 { operations.reduce(0, +) }

        /// Upper bound of the bucket holding the given quantile, in microseconds.
        func quantile(_ q: Double, kind: Int) -> Double {
            let h = histograms[kind], count = h.reduce(0, +)
            guard count > 0 else { return 0 }
            var seen: UInt64 = 0
            for (i, n) in h.enumerated() {
                seen += n
                if Double(seen) >= q * Double(count) { return Double(1 << (i + 1)) }
            }
            return Double(1 << SharedStats.buckets)
        }
    }

    /// What the live slots hold plus what retired workers did.
    func totals(workers: Int, retired: Totals = Totals()) -> Totals {
        var t = retired
        for id in 0..<workers { accumulate(id, into: &t) }
        return t
    }
}

func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

func appendLine(_ path: String, _ line: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return }
    _ = (line + "\n").withCString { write(fd, $0, strlen($0)) }
    close(fd)
}
