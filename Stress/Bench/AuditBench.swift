import ArgumentParser
import CPMLL
import Foundation
import PMLL
import PMLLStressSupport

/// What the audit log costs: the same commits and queue round trips on a pool with an audit
/// ring and on one created without (`auditRingSlots` 0), in one process, in alternating rounds.
/// Each timed loop includes the drains its records cause (by the process's drainer thread, and
/// by the appender itself when the ring is three quarters full), so throughput carries the
/// whole cost. The machine moves between faster and slower phases lasting seconds, so besides
/// the ratio of the medians each on round is compared with the off round next to it (the order
/// within a pair alternates: on-off, off-on, ...), and the median of those pairs is reported.
struct AuditBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audit", abstract: "Commits and queue operations with the audit log on and off.")

    @OptionGroup var directories: BenchDirectories
    @Option(help: "Operations per round on tmpfs.") var tmpfsOperations = 20000
    @Option(help: "Operations per round on other filesystems.") var diskOperations = 1000
    @Option(help: "Pairs of rounds (on-off, off-on, on-off, ...); medians are reported.") var rounds = 5
    @Option(help: "Slots of the audit ring of the pool with auditing on (a power of two, 64...65536).") var ringSlots = 1024
    @Option(help: "Only these operations (commit, queue, queue-steps, lock, append); all when not given.") var only: [String] = []
    @Flag var json = false

    struct Row: Codable {
        let directory: String
        let filesystem: String
        let operation: String
        let audit: Bool
        let operations: Int
        /// Medians over the rounds.
        let operationsPerSecond: Double
        let p50Microseconds: Double
        let p99Microseconds: Double
        /// Throughput of each round, in order.
        let roundsPerSecond: [Double]
        /// With the audit log on: how much slower than the off round of the same pair, per pair
        /// (ops/s off / ops/s on - 1), and the median of those.
        let pairedSlowdowns: [Double]?
        let medianPairedSlowdown: Double?
    }

    func run() async throws {
        var rows: [Row] = []
        try await directories.forEachAsync(tag: "pmll-auditbench") { dir, fs in
            let n = fs == "tmpfs" ? tmpfsOperations : diskOperations
            var pools: [Bool: Pool] = [:]
            for audit in [true, false] {
                var options = PoolOptions()
                options.auditRingSlots = audit ? ringSlots : 0
                options.size = 64 << 20
                pools[audit] = try Pool.open(path: dir + (audit ? "/on.pool" : "/off.pool"), options: options)
            }
            // Every step of a queue operation recorded (three records instead of one).
            var stepsOptions = PoolOptions()
            stepsOptions.auditRingSlots = ringSlots
            stepsOptions.size = 64 << 20
            stepsOptions.auditQueueSteps = true
            let steps = try Pool.open(path: dir + "/steps.pool", options: stepsOptions)
            for operation in ["commit", "queue", "queue-steps", "lock", "append"] where only.isEmpty || only.contains(operation) {
                var samples: [Bool: [(rate: Double, p50: Double, p99: Double)]] = [true: [], false: []]
                for r in 0..<rounds {
                    for audit in r % 2 == 0 ? [true, false] : [false, true] {
                        let pool = audit && operation == "queue-steps" ? steps : pools[audit]!
                        samples[audit]!.append(try await Self.round(operation, pool: pool, n: operation == "lock" ? n * 20 : n))
                    }
                }
                let paired = zip(samples[true]!, samples[false]!).map { on, off in off.rate / on.rate - 1 }
                for audit in [true, false] {
                    let s = samples[audit]!
                    rows.append(Row(directory: dir, filesystem: fs, operation: operation, audit: audit, operations: operation == "lock" ? n * 20 : n,
                                    operationsPerSecond: median(s.map(\.rate)), p50Microseconds: median(s.map(\.p50)),
                                    p99Microseconds: median(s.map(\.p99)), roundsPerSecond: s.map(\.rate),
                                    pairedSlowdowns: audit ? paired : nil, medianPairedSlowdown: audit ? median(paired) : nil))
                }
            }
        }
        if json { try printJSONRows(rows); return }
        print("Audit log on and off: medians of \(rounds) pairs of rounds (one process; drains included; order within a pair alternates)")
        var table = [["directory", "fs", "operation", "audit", "ops", "ops/s", "p50 us", "p99 us", "slower by (medians)", "slower by (median pair)", "rounds ops/s"]]
        for row in rows {
            let off = rows.first { $0.directory == row.directory && $0.operation == row.operation && !$0.audit }!
            table.append([row.directory, row.filesystem, row.operation, row.audit ? "on" : "off", "\(row.operations)",
                          String(format: "%.0f", row.operationsPerSecond), String(format: "%.2f", row.p50Microseconds),
                          String(format: "%.2f", row.p99Microseconds),
                          row.audit ? String(format: "%+.1f %%", (off.operationsPerSecond / row.operationsPerSecond - 1) * 100) : "",
                          row.medianPairedSlowdown.map { String(format: "%+.1f %%", $0 * 100) } ?? "",
                          row.roundsPerSecond.map { String(format: "%.0f", $0) }.joined(separator: " ")])
        }
        print(TextTable.render(table))
    }

    static func round(_ operation: String, pool: Pool, n: Int) async throws -> (rate: Double, p50: Double, p99: Double) {
        var latencies = [Int64]()
        latencies.reserveCapacity(n)
        let start = monotonicNanoseconds()
        switch operation {
        case "commit":
            let value = [UInt8](repeating: 7, count: 64)
            for i in 0..<n {
                let t0 = monotonicNanoseconds()
                try pool.transaction(isolation: .none) { tx in
                    try tx.set("bench/a\(i & 63)", value)
                    try tx.set("bench/b\(i & 63)", value)
                }
                latencies.append(monotonicNanoseconds() - t0)
            }
        case "queue", "queue-steps":
            let queue = try pool.queue(named: "bench")
            for _ in 0..<n {
                let t0 = monotonicNanoseconds()
                try await queue.execute(kind: "bench", timeout: .some(nil)) { _ in }
                latencies.append(monotonicNanoseconds() - t0)
            }
        case "append":
            // One bare record, as a queue operation appends it (drains included).
            for i in 0..<n {
                let t0 = monotonicNanoseconds()
                pool.audit(.queueSubmit) { text in
                    text.add("queue 'bench' ticket ")
                    text.add(UInt64(i))
                    text.add(" kind 'bench'")
                }
                latencies.append(monotonicNanoseconds() - t0)
            }
        default:
            try lockLoop(pool, n, &latencies)
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        latencies.sort()
        return (Double(n) / elapsed, Double(latencies[n / 2]) / 1000, Double(latencies[n * 99 / 100]) / 1000)
    }
}

/// Uncontended acquire and release, from synchronous code (the blocking form of `withLock`).
private func lockLoop(_ pool: Pool, _ n: Int, _ latencies: inout [Int64]) throws {
    let lock = try pool.lock(named: "bench", level: .package)
    for _ in 0..<n {
        let t0 = monotonicNanoseconds()
        try lock.withLock { _ in }
        latencies.append(monotonicNanoseconds() - t0)
    }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? 0 : sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}
