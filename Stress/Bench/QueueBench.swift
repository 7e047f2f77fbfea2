import ArgumentParser
import CPMLL
import CPMLLPeers
import Foundation
import Histogram
import PMLL
import PMLLStressSupport

/// Persistent operation round trip (submit, run an empty operation, record completion),
/// PMLL's hardened queue against a SQLite (WAL, synchronous=FULL) table used as the same
/// queue, one transaction per state change, with 1 and 4 processes.
struct QueueBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "queue", abstract: "Hardened queue vs a SQLite WAL queue.")

    @OptionGroup var directories: BenchDirectories
    @Option(help: "Operations per run on tmpfs.") var tmpfsOperations = 4000
    @Option(help: "Operations per run on other filesystems.") var diskOperations = 400
    @Option(help: "Operations per SQLite run, when PMLL runs many more (SQLite with 4 processes manages a few hundred a second). Default: as many as PMLL.") var peerOperations: Int?
    @Flag(help: "Create the pool without an audit log (by default each operation appends one audit record when it ends, drained by a thread of each process).") var noAudit = false
    @Flag var json = false

    struct Row: Codable {
        let directory: String
        let filesystem: String
        let kind: String
        let processes: Int
        let operations: Int
        let operationsPerSecond: Double
        let p50Microseconds: Double
        let p99Microseconds: Double
        let barriersPerOperation: Double?
    }

    func run() throws {
        var rows: [Row] = []
        try directories.forEach(tag: "pmll-qbench") { dir, fs in
            let operations = fs == "tmpfs" ? tmpfsOperations : diskOperations
            for processes in [1, 4] {
                for kind in ["pmll", "sqlite"] {
                    rows.append(try measure(kind: kind, processes: processes, operations: kind == "sqlite" ? peerOperations ?? operations : operations,
                                            directory: dir, filesystem: fs))
                }
            }
        }
        if json { try printJSONRows(rows); return }
        print("Persistent queue operation round trip (submit, run empty, record completion), same durability")
        var table = [["directory", "fs", "kind", "P", "ops", "ops/s", "ratio to SQLite", "p50 us", "p99 us", "barriers/op"]]
        for row in rows {
            let peer = rows.first { $0.directory == row.directory && $0.processes == row.processes && $0.kind == "sqlite" }!
            table.append([row.directory, row.filesystem, row.kind, "\(row.processes)", "\(row.operations)",
                          String(format: "%.0f", row.operationsPerSecond), String(format: "%.2f", row.operationsPerSecond / peer.operationsPerSecond),
                          String(format: "%.1f", row.p50Microseconds), String(format: "%.1f", row.p99Microseconds),
                          row.barriersPerOperation.map { String(format: "%.2f", $0) } ?? "3 commits"])
        }
        print(TextTable.render(table))
    }

    func measure(kind: String, processes: Int, operations: Int, directory: String, filesystem: String) throws -> Row {
        let shared = try SharedFile(directory + "/qbench-\(kind)-\(processes).shm", create: true)
        if kind == "pmll" {
            var options = PoolOptions()
            if noAudit { options.auditRingSlots = 0 }
            _ = try Pool.open(path: directory + "/queue.pool", options: options).queue(named: "bench")
        }
        if kind == "sqlite" { guard let db = peers_sqlite_open(directory + "/queue.sqlite") else { throw ToolError("sqlite open") }; peers_sqlite_close(db) }
        let each = operations / processes
        let (elapsed, histogram, barriers) = try runChildren((0..<processes).map { i in
            ["queue-child", "--kind", kind, "--directory", directory, "--count", "\(each)", "--shared", shared.path, "--index", "\(i)"]
        }, shared: shared)
        return Row(directory: directory, filesystem: filesystem, kind: kind, processes: processes, operations: each * processes,
                   operationsPerSecond: Double(each * processes) / elapsed,
                   p50Microseconds: Double(histogram.valueAtPercentile(50)) / 1000,
                   p99Microseconds: Double(histogram.valueAtPercentile(99)) / 1000,
                   barriersPerOperation: kind == "pmll" ? Double(barriers) / Double(each * processes) : nil)
    }
}

struct QueueChild: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "queue-child", shouldDisplay: false)
    @Option var kind: String
    @Option var directory: String
    @Option var count: Int
    @Option var shared: String
    @Option var index: Int

    func run() async throws {
        let flags = try SharedFile(shared, create: false)
        var latencies: [Int64] = []
        latencies.reserveCapacity(count)
        var barriers: UInt64 = 0, ended: Int64 = 0
        if kind == "pmll" {
            let queue = try Pool.open(path: directory + "/queue.pool").queue(named: "bench")
            sayLine("ready")
            while pmll_load32(flags.startFlag) == 0 { usleep(100) }
            let before = Pool.durableBarrierCount
            for _ in 0..<count {
                let t0 = monotonicNanoseconds()
                try await queue.execute(kind: "bench", timeout: .some(nil)) { _ in }
                latencies.append(monotonicNanoseconds() - t0)
            }
            ended = monotonicNanoseconds()
            barriers = Pool.durableBarrierCount - before
        } else {
            guard let db = peers_sqlite_open(directory + "/queue.sqlite") else { throw ToolError("sqlite open") }
            defer { peers_sqlite_close(db) }
            sayLine("ready")
            while pmll_load32(flags.startFlag) == 0 { usleep(100) }
            for _ in 0..<count {
                let t0 = monotonicNanoseconds()
                guard peers_sqlite_operation(db, Int32(index)) == 0 else { throw ToolError("sqlite operation") }
                latencies.append(monotonicNanoseconds() - t0)
            }
            ended = monotonicNanoseconds()
        }
        sayResults(ended: ended, count: barriers, latencies: latencies)
    }
}
