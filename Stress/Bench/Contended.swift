import CPMLL
import CPMLLPeers
import Foundation
import PMLL
import PMLLStressSupport

/// P processes hammering one lock for a fixed time: throughput, the share of acquisitions
/// each process got (fairness), and a mutual-exclusion check (a non-atomic shared counter
/// incremented inside the critical section must equal the sum of per-process counts).
enum Contended {
    struct Row: Codable {
        let kind: String
        let processes: Int
        let operationsPerSecond: Double
        let minShare: Double
        let maxShare: Double
        let jainFairness: Double
        let exclusionViolated: Bool
    }

    static func run(kind: String, processes: Int, seconds: Double, directory: String) throws -> Row {
        let shared = try SharedFile(directory + "/contend-\(kind).shm", create: true)
        if kind == "pthread" { precondition(peers_robust_init(shared.base) == 0) }
        _ = try Pool.open(path: directory + "/bench.pool")   // created once, before the children race
        let children = try (0..<processes).map { i in
            try BenchChild(["contend-child", "--kind", kind, "--directory", directory, "--index", "\(i)"])
        }
        for child in children { _ = child.readLine() }   // "ready"
        let start = monotonicNanoseconds()
        pmll_store32(shared.startFlag, 1)
        usleep(UInt32(seconds * 1e6))
        pmll_store32(shared.stopFlag, 1)
        for child in children { child.process.waitUntilExit() }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        let counts = (0..<processes).map { Double(shared.counter(1 + $0).pointee) }
        let total = counts.reduce(0, +)
        let shares = counts.map { $0 / max(total, 1) }
        let jain = total * total / (Double(processes) * counts.map { $0 * $0 }.reduce(0, +))
        return Row(kind: kind, processes: processes, operationsPerSecond: total / elapsed,
                   minShare: shares.min() ?? 0, maxShare: shares.max() ?? 0, jainFairness: jain,
                   exclusionViolated: UInt64(total) != shared.counter(0).pointee)
    }

    /// One hammering process.
    static func child(kind: String, directory: String, index: Int) throws {
        let shared = try SharedFile(directory + "/contend-\(kind).shm", create: false)
        let total = shared.counter(0), mine = shared.counter(1 + index)
        let pool = try Pool.open(path: directory + "/bench.pool")
        let lock = try pool.lock(named: "bench/contended", level: .package)
        sayLine("ready")
        while pmll_load32(shared.startFlag) == 0 { usleep(100) }
        if kind == "pmll" {
            while pmll_load32(shared.stopFlag) == 0 {
                try lock.withLock { _ in total.pointee &+= 1 }
                mine.pointee &+= 1
            }
        } else {
            let mutex = shared.base
            while pmll_load32(shared.stopFlag) == 0 {
                _ = peers_robust_lock(mutex)
                total.pointee &+= 1
                _ = peers_robust_unlock(mutex)
                mine.pointee &+= 1
            }
        }
    }
}

