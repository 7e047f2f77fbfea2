import ArgumentParser
import CPMLL
import CPMLLPeers
import Foundation
import Histogram
import PMLL
import PMLLStressSupport

/// A small transaction (two 64-byte records) against libpmemobj's (two add_range snapshots
/// of 64 bytes), same filesystem, same run; and PMLL throughput with 4 processes on
/// disjoint keys.
struct TransactionBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tx", abstract: "State-store transactions vs libpmemobj.")

    @OptionGroup var directories: BenchDirectories
    @Option var tmpfsTransactions = 20000
    @Option var diskTransactions = 500
    @Flag var json = false

    struct Row: Codable {
        let directory: String
        let filesystem: String
        let kind: String
        let processes: Int
        let transactions: Int
        let p50Microseconds: Double
        let p99Microseconds: Double
        let transactionsPerSecond: Double
        let barriersPerCommit: Double
    }

    func run() throws {
        var rows: [Row] = []
        try directories.forEach(tag: "pmll-txbench") { dir, fs in
            let n = fs == "tmpfs" ? tmpfsTransactions : diskTransactions
            rows.append(try single(kind: "pmll", n: n, directory: dir, filesystem: fs))
            rows.append(try single(kind: "pmemobj", n: n, directory: dir, filesystem: fs))
            rows.append(try parallel(processes: 4, n: n, directory: dir, filesystem: fs))
        }
        if json { try printJSONRows(rows); return }
        print("Small transaction: two 64-byte records, commit latency and durable barriers per commit")
        var table = [["directory", "fs", "kind", "P", "tx", "p50 us", "p99 us", "tx/s", "latency ratio", "barriers/commit"]]
        for row in rows {
            let peer = rows.first { $0.directory == row.directory && $0.kind == "pmemobj" }!
            table.append([row.directory, row.filesystem, row.kind, "\(row.processes)", "\(row.transactions)",
                          String(format: "%.2f", row.p50Microseconds), String(format: "%.2f", row.p99Microseconds),
                          String(format: "%.0f", row.transactionsPerSecond),
                          row.processes == 1 ? String(format: "%.2f", row.p50Microseconds / peer.p50Microseconds) : "-",
                          String(format: "%.2f", row.barriersPerCommit)])
        }
        print(TextTable.render(table))
    }

    func single(kind: String, n: Int, directory: String, filesystem: String) throws -> Row {
        var histogram = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
        let value = [UInt8](repeating: 7, count: 64)
        let start: Int64, barriers: UInt64
        if kind == "pmll" {
            let pool = try Pool.open(path: directory + "/tx.pool")
            for _ in 0..<50 { try pool.transaction { tx in try tx.set("a", value); try tx.set("b", value) } }
            let before = peers_msync_count()
            start = monotonicNanoseconds()
            for i in 0..<n {
                let t0 = monotonicNanoseconds()
                try pool.transaction { tx in
                    try tx.set("a", [UInt8](repeating: UInt8(i & 0xff), count: 64))
                    try tx.set("b", value)
                }
                _ = histogram.record(UInt64(monotonicNanoseconds() - t0))
            }
            barriers = peers_msync_count() - before
        } else {
            guard let pop = peers_pmemobj_create(directory + "/tx.obj") else { throw ToolError("pmemobj_create failed") }
            defer { peers_pmemobj_close(pop) }
            for _ in 0..<50 { _ = peers_pmemobj_tx(pop, 1) }
            let before = peers_msync_count()
            start = monotonicNanoseconds()
            for i in 0..<n {
                let t0 = monotonicNanoseconds()
                guard peers_pmemobj_tx(pop, UInt8(i & 0xff)) == 0 else { throw ToolError("pmemobj tx aborted") }
                _ = histogram.record(UInt64(monotonicNanoseconds() - t0))
            }
            barriers = peers_msync_count() - before
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        return Row(directory: directory, filesystem: filesystem, kind: kind, processes: 1, transactions: n,
                   p50Microseconds: Double(histogram.valueAtPercentile(50)) / 1000, p99Microseconds: Double(histogram.valueAtPercentile(99)) / 1000,
                   transactionsPerSecond: Double(n) / elapsed, barriersPerCommit: Double(barriers) / Double(n))
    }

    func parallel(processes: Int, n: Int, directory: String, filesystem: String) throws -> Row {
        let shared = try SharedFile(directory + "/txbench.shm", create: true)
        _ = try Pool.open(path: directory + "/tx.pool")
        let each = n / processes
        let (elapsed, histogram, barriers) = try runChildren((0..<processes).map { i in
            ["tx-child", "--directory", directory, "--count", "\(each)", "--shared", shared.path, "--index", "\(i)"]
        }, shared: shared)
        return Row(directory: directory, filesystem: filesystem, kind: "pmll", processes: processes, transactions: each * processes,
                   p50Microseconds: Double(histogram.valueAtPercentile(50)) / 1000, p99Microseconds: Double(histogram.valueAtPercentile(99)) / 1000,
                   transactionsPerSecond: Double(each * processes) / elapsed, barriersPerCommit: Double(barriers) / Double(each * processes))
    }
}

struct TransactionChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tx-child", shouldDisplay: false)
    @Option var directory: String
    @Option var count: Int
    @Option var shared: String
    @Option var index: Int

    func run() throws {
        let flags = try SharedFile(shared, create: false)
        let pool = try Pool.open(path: directory + "/tx.pool")
        let value = [UInt8](repeating: 7, count: 64)
        sayLine("ready")
        while pmll_load32(flags.startFlag) == 0 { usleep(100) }
        var latencies: [Int64] = []
        let before = peers_msync_count()
        for _ in 0..<count {
            let t0 = monotonicNanoseconds()
            try pool.transaction { tx in
                try tx.set("p\(index)/a", value)
                try tx.set("p\(index)/b", value)
            }
            latencies.append(monotonicNanoseconds() - t0)
        }
        sayLine(([String(peers_msync_count() - before)] + latencies.map { String($0) }).joined(separator: " "))
    }
}

