import ArgumentParser
import CPMLL
import CPMLLPeers
import Foundation
import Histogram
import PMLL
import PMLLStressSupport

/// Small transactions against their peers, same filesystem, same run:
///  - one process: read two keys and write both with 64-byte values, serializable (read
///    tracking and validation) against isolation `.none` (today's commit), interleaved in
///    rounds so that both see the same machine; the write-only form against libpmemobj
///    (two add_range snapshots of 64 bytes); the read-write form against SQLite (WAL,
///    synchronous=FULL, BEGIN IMMEDIATE);
///  - 4 processes: the read-write transaction on disjoint keys (one pair per process) and on
///    one shared pair (every transaction conflicts with the others' commits), PMLL against SQLite;
///    with --scaling-only also libpmemobj's transaction from a pool per process (it opens a pool
///    in one process at a time: pmemobj_open takes an exclusive flock) and, on a disk, an
///    ideal log.
struct TransactionBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tx", abstract: "State-store transactions vs libpmemobj and SQLite.")

    @OptionGroup var directories: BenchDirectories
    @Option var tmpfsTransactions = 20000
    @Option var diskTransactions = 500
    @Option(help: "Processes of the parallel rows.") var processes = 4
    @Flag(help: "Only the disjoint-key rows: 4 processes and 1 (how commits scale).") var scalingOnly = false
    @Option(help: "With --scaling-only: run every process of a row for this many seconds (0: a fixed count each).") var seconds = 0.0
    @Option(help: "With --scaling-only: rounds of the rows (medians and the range of the rounds' ratios are printed).") var rounds = 1
    @Flag(help: "Create the pool without an audit log (by default every commit appends an audit record, drained by a thread of each process).") var noAudit = false
    @Flag(help: "With --scaling-only: also run the rows with a pool per process (nothing shared: what the machine gives 4 processes of this work).") var ownPools = false
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
        /// PMLL: bodies re-run after a conflict, per committed transaction.
        let retriesPerTransaction: Double
        /// PMLL: transactions whose retries all conflicted (nothing written).
        let gaveUp: Int
        /// PMLL's redo log and the ideal log on a disk: what the row's shared flushes did.
        var flushes: FlushCycle? = nil
    }

    /// A row's flushes: a cycle is the row's time divided by its flushes (one flush at a
    /// time), so `cycle − flush` is the time the disk waited for the next group: the commits'
    /// work between flushes, the wake-ups, and the group wait.
    struct FlushCycle: Codable {
        let flushes: UInt64
        let commitsPerFlush: Double
        let flushMicroseconds: Double
        let groupWaitMicroseconds: Double
        let cycleMicroseconds: Double

        init?(flushes: UInt64, commits: UInt64, flushNanoseconds: UInt64, groupWaitNanoseconds: UInt64, elapsedSeconds: Double) {
            guard flushes > 0 else { return nil }
            let n = Double(flushes)
            self.flushes = flushes
            commitsPerFlush = Double(commits) / n
            flushMicroseconds = Double(flushNanoseconds) / n / 1e3
            groupWaitMicroseconds = Double(groupWaitNanoseconds) / n / 1e3
            cycleMicroseconds = elapsedSeconds * 1e6 / n
        }
    }

    func run() throws {
        var rows: [Row] = []
        try directories.forEach(tag: "pmll-txbench") { dir, fs in
            let n = fs == "tmpfs" ? tmpfsTransactions : diskTransactions
            var options = PoolOptions()
            if noAudit { options.auditRingSlots = 0 }
            _ = try Pool.open(path: dir + "/tx.pool", options: options)
            if ownPools { for i in 0..<processes { _ = try Pool.open(path: dir + "/tx-\(i).pool", options: options) } }
            if scalingOnly {
                // The database exists before its first row (its children would race to make it).
                guard let kv = peers_sqlite_kv_open(dir + "/tx.sqlite") else { throw ToolError("sqlite open failed") }
                peers_sqlite_kv_close(kv)
                // Rounds alternate which row goes first, so that a slow minute of a shared
                // machine weighs on both.
                for round in 0..<rounds {
                    // The ideal log measures what sharing flushes can give; on tmpfs there is no flush.
                    for peer in ["pmll"] + (ownPools ? ["pmll-own"] : []) + ["sqlite", "pmemobj-own"] + (fs == "tmpfs" ? [] : ["ideal-log"]) {
                        for p in round % 2 == 0 ? [processes, 1] : [1, processes] {
                            rows.append(try parallel(peer: peer, keys: "disjoint", n: p == 1 ? n / processes : n, directory: dir, filesystem: fs, processes: p))
                        }
                    }
                }
                return
            }
            rows += try trackingCost(n: n, directory: dir, filesystem: fs)
            rows.append(try single(kind: "pmll write-only", n: n, directory: dir, filesystem: fs))
            rows.append(try single(kind: "pmemobj write-only", n: n, directory: dir, filesystem: fs))
            rows.append(try single(kind: "sqlite read-write", n: n, directory: dir, filesystem: fs))
            for keys in ["disjoint", "shared"] {
                rows.append(try parallel(peer: "pmll", keys: keys, n: n, directory: dir, filesystem: fs))
                rows.append(try parallel(peer: "sqlite", keys: keys, n: n, directory: dir, filesystem: fs))
            }
            // The same disjoint transaction from one process: how throughput scales.
            rows.append(try parallel(peer: "pmll", keys: "disjoint", n: n / processes, directory: dir, filesystem: fs, processes: 1))
            rows.append(try parallel(peer: "sqlite", keys: "disjoint", n: n / processes, directory: dir, filesystem: fs, processes: 1))
        }
        if json { try printJSONRows(rows); return }
        print("Small transactions: read two keys, write both (64-byte values); write-only: write two. Latency per commit, durable barriers per commit")
        var table = [["directory", "fs", "kind", "P", "tx", "p50 us", "p99 us", "tx/s", "retries/tx", "gave up", "barriers/commit"]]
        for row in rows {
            table.append([row.directory, row.filesystem, row.kind, "\(row.processes)", "\(row.transactions)",
                          String(format: "%.2f", row.p50Microseconds), String(format: "%.2f", row.p99Microseconds),
                          String(format: "%.0f", row.transactionsPerSecond), String(format: "%.3f", row.retriesPerTransaction),
                          "\(row.gaveUp)", String(format: "%.2f", row.barriersPerCommit)])
        }
        print(TextTable.render(table))
        let cycles = rows.filter { $0.flushes != nil }
        if !cycles.isEmpty {
            print("Shared flushes on disk (µs per flush; a cycle is the row's time per flush, and cycle − flush the disk's wait for the next group)")
            var flushTable = [["directory", "kind", "P", "flushes/s", "commits/flush", "flush us", "group wait us", "cycle us", "cycle - flush us"]]
            for row in cycles {
                let f = row.flushes!
                flushTable.append([row.directory, row.kind, "\(row.processes)", String(format: "%.0f", 1e6 / f.cycleMicroseconds),
                                   String(format: "%.2f", f.commitsPerFlush), String(format: "%.1f", f.flushMicroseconds),
                                   String(format: "%.1f", f.groupWaitMicroseconds), String(format: "%.1f", f.cycleMicroseconds),
                                   String(format: "%.1f", f.cycleMicroseconds - f.flushMicroseconds)])
            }
            print(TextTable.render(flushTable))
        }
        for dir in Set(rows.map(\.directory)).sorted() {
            func row(_ kind: String, _ p: Int = 1) -> Row? { rows.first { $0.directory == dir && $0.kind == kind && $0.processes == p } }
            func scaling(_ kind: String) -> String? {
                let many = rows.filter { $0.directory == dir && $0.kind == kind && $0.processes == processes }.map(\.transactionsPerSecond)
                let one = rows.filter { $0.directory == dir && $0.kind == kind && $0.processes == 1 }.map(\.transactionsPerSecond)
                guard !many.isEmpty, many.count == one.count else { return nil }
                func median(_ v: [Double]) -> Double { let s = v.sorted(); return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2 }
                let ratios = zip(many, one).map { $0 / $1 }
                let range = many.count > 1 ? String(format: " (rounds %.2f–%.2f)", ratios.min()!, ratios.max()!) : ""
                return String(format: "%.2fx", median(many) / median(one)) + range
            }
            if let d = scaling("pmll serializable disjoint"), let q = scaling("sqlite disjoint") {
                print("\(dir): disjoint keys, \(processes) processes vs 1 (medians): PMLL \(d) (target: at least 1.7 on tmpfs, 3 on disk), SQLite \(q)")
            }
            if let ceiling = scaling("ideal log disjoint") {
                print("\(dir): an ideal write-ahead log (a record and a shared fdatasync per commit, no store): \(ceiling)")
            }
            if let obj = scaling("pmemobj own pools") {
                print("\(dir): libpmemobj, a pool per process (a PMDK pool is open in one process at a time): \(obj)")
            }
            if let own = scaling("pmll serializable own pools") {
                print("\(dir): the same with a pool per process (nothing shared): \(own)")
            }
            guard let s = row("pmll serializable"), let n = row("pmll none"), let w = row("pmll write-only"), let o = row("pmemobj write-only"),
                  let q = row("sqlite read-write") else { continue }
            print("\(dir): read tracking costs \(String(format: "%.3f", s.p50Microseconds / n.p50Microseconds))x of isolation none (p50; target at most 1.10); " +
                  "write-only \(String(format: "%.2f", w.p50Microseconds / o.p50Microseconds))x libpmemobj; " +
                  "read-write \(String(format: "%.2f", s.p50Microseconds / q.p50Microseconds))x SQLite (p50 latency ratios)")
            if let d = row("pmll serializable disjoint", processes), let sh = row("pmll serializable shared", processes),
               let qd = row("sqlite disjoint", processes), let qs = row("sqlite shared", processes) {
                print("\(dir): \(processes) processes: disjoint \(String(format: "%.0f", d.transactionsPerSecond)) tx/s (\(String(format: "%.2f", d.transactionsPerSecond / qd.transactionsPerSecond))x SQLite), " +
                      "shared pair \(String(format: "%.0f", sh.transactionsPerSecond)) tx/s (\(String(format: "%.2f", sh.transactionsPerSecond / qs.transactionsPerSecond))x SQLite, \(String(format: "%.2f", sh.retriesPerTransaction)) retries/tx)")
            }
        }
    }

    /// Serializable against isolation `.none` on the same read-write transaction, in 20
    /// alternating rounds.
    func trackingCost(n: Int, directory: String, filesystem: String) throws -> [Row] {
        let pool = try Pool.open(path: directory + "/tx.pool")
        var histograms = [Histogram<UInt64>(numberOfSignificantValueDigits: .three), Histogram<UInt64>(numberOfSignificantValueDigits: .three)]
        var elapsed = [Int64](repeating: 0, count: 2), barriers = [UInt64](repeating: 0, count: 2)
        let isolations: [TransactionIsolation] = [.serializable, .none]
        for isolation in isolations { for i in 0..<50 { try readWrite(pool, isolation, "a", "b", UInt8(i)) } }
        let rounds = 20, each = max(1, n / rounds)
        for round in 0..<rounds {
            for k in (round % 2 == 0 ? [0, 1] : [1, 0]) {
                let before = peers_msync_count(), start = monotonicNanoseconds()
                for i in 0..<each {
                    let t0 = monotonicNanoseconds()
                    try readWrite(pool, isolations[k], "a", "b", UInt8(i & 0xff))
                    _ = histograms[k].record(UInt64(monotonicNanoseconds() - t0))
                }
                elapsed[k] += monotonicNanoseconds() - start
                barriers[k] += peers_msync_count() - before
            }
        }
        return (0..<2).map { k in
            Row(directory: directory, filesystem: filesystem, kind: k == 0 ? "pmll serializable" : "pmll none", processes: 1, transactions: each * rounds,
                p50Microseconds: Double(histograms[k].valueAtPercentile(50)) / 1000, p99Microseconds: Double(histograms[k].valueAtPercentile(99)) / 1000,
                transactionsPerSecond: Double(each * rounds) / (Double(elapsed[k]) / 1e9), barriersPerCommit: Double(barriers[k]) / Double(each * rounds),
                retriesPerTransaction: 0, gaveUp: 0)
        }
    }

    func single(kind: String, n: Int, directory: String, filesystem: String) throws -> Row {
        var histogram = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
        let value = [UInt8](repeating: 7, count: 64)
        var measure: (Int) throws -> Void
        var cleanup: () -> Void = {}
        switch kind {
        case "pmll write-only":
            let pool = try Pool.open(path: directory + "/tx.pool")
            measure = { i in try pool.transaction { tx in try tx.set("a", [UInt8](repeating: UInt8(i & 0xff), count: 64)); try tx.set("b", value) } }
        case "pmemobj write-only":
            guard let pop = peers_pmemobj_create(directory + "/tx.obj") else { throw ToolError("pmemobj_create failed") }
            cleanup = { peers_pmemobj_close(pop) }
            measure = { i in guard peers_pmemobj_tx(pop, UInt8(i & 0xff)) == 0 else { throw ToolError("pmemobj tx aborted") } }
        default:
            guard let kv = peers_sqlite_kv_open(directory + "/tx.sqlite") else { throw ToolError("sqlite open failed") }
            cleanup = { peers_sqlite_kv_close(kv) }
            measure = { i in guard peers_sqlite_kv_tx(kv, "a", "b", UInt8(i & 0xff)) == 0 else { throw ToolError("sqlite transaction failed") } }
        }
        defer { cleanup() }
        for i in 0..<50 { try measure(i) }
        let before = peers_msync_count()
        let start = monotonicNanoseconds()
        for i in 0..<n {
            let t0 = monotonicNanoseconds()
            try measure(i)
            _ = histogram.record(UInt64(monotonicNanoseconds() - t0))
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        return Row(directory: directory, filesystem: filesystem, kind: kind, processes: 1, transactions: n,
                   p50Microseconds: Double(histogram.valueAtPercentile(50)) / 1000, p99Microseconds: Double(histogram.valueAtPercentile(99)) / 1000,
                   transactionsPerSecond: Double(n) / elapsed, barriersPerCommit: Double(peers_msync_count() - before) / Double(n),
                   retriesPerTransaction: 0, gaveUp: 0)
    }

    func parallel(peer: String, keys: String, n: Int, directory: String, filesystem: String, processes: Int? = nil) throws -> Row {
        let processes = processes ?? self.processes
        let shared = try SharedFile(directory + "/txbench.shm", create: true)
        let pool = try Pool.open(path: directory + "/tx.pool")
        let before = try pool.transactionStatistics()
        let usageBefore = peer == "pmll" && filesystem != "tmpfs" ? try pool.storeUsage() : nil
        let each = n / processes
        let timed = scalingOnly && seconds > 0
        // A fresh control block per row: its count of attached processes drives the gathering.
        if peer == "ideal-log", peers_log_reset(directory + "/tx.log") != 0 { throw ToolError("cannot prepare \(directory)/tx.log") }
        let (elapsed, histogram, barriers) = try runChildren((0..<processes).map { i in
            ["tx-child", "--directory", directory, "--count", "\(timed ? Int(Int32.max) : each)", "--shared", shared.path, "--index", "\(i)", "--peer", peer, "--keys", keys]
        }, shared: shared, duration: timed ? seconds : nil)
        let after = try pool.transactionStatistics()
        var flushes: FlushCycle?
        if let u0 = usageBefore {
            let u1 = try pool.storeUsage()
            flushes = FlushCycle(flushes: u1.redoFlushes &- u0.redoFlushes, commits: u1.redoFlushedCommits &- u0.redoFlushedCommits,
                                 flushNanoseconds: u1.redoFlushNanoseconds &- u0.redoFlushNanoseconds,
                                 groupWaitNanoseconds: u1.redoGroupWaitNanoseconds &- u0.redoGroupWaitNanoseconds, elapsedSeconds: elapsed)
        } else if peer == "ideal-log" {
            var stats = peers_log_stats()
            if peers_log_statistics(directory + "/tx.log", &stats) == 0 {
                flushes = FlushCycle(flushes: stats.flushes, commits: stats.commits, flushNanoseconds: stats.flush_ns,
                                     groupWaitNanoseconds: stats.gather_ns, elapsedSeconds: elapsed)
            }
        }
        let committed = Int(histogram.totalCount)
        let kind = switch peer {
        case "pmll": "pmll serializable \(keys)"
        case "pmll-own": "pmll serializable own pools"
        case "ideal-log": "ideal log \(keys)"
        case "pmemobj-own": "pmemobj own pools"
        default: "sqlite \(keys)"
        }
        return Row(directory: directory, filesystem: filesystem, kind: kind,
                   processes: processes, transactions: committed,
                   p50Microseconds: Double(histogram.valueAtPercentile(50)) / 1000, p99Microseconds: Double(histogram.valueAtPercentile(99)) / 1000,
                   transactionsPerSecond: Double(committed) / elapsed, barriersPerCommit: Double(barriers) / Double(max(committed, 1)),
                   retriesPerTransaction: peer == "pmll" ? Double(after.retries - before.retries) / Double(max(committed, 1)) : 0,
                   gaveUp: peer == "pmll" ? Int(after.failures - before.failures) : 0, flushes: flushes)

    }
}

/// The read-write transaction of the benchmark.
func readWrite(_ pool: Pool, _ isolation: TransactionIsolation, _ a: String, _ b: String, _ fill: UInt8) throws {
    try pool.transaction(isolation: isolation) { tx in
        let x = try tx.get(a), y = try tx.get(b)
        try tx.set(a, [UInt8](repeating: fill &+ (x?.first ?? 0), count: 64))
        try tx.set(b, [UInt8](repeating: fill &+ (y?.first ?? 0), count: 64))
    }
}

struct TransactionChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tx-child", shouldDisplay: false)
    @Option var directory: String
    @Option var count: Int
    @Option var shared: String
    @Option var index: Int
    @Option var peer = "pmll"
    @Option(help: "disjoint (a pair per process) or shared (one pair for all)") var keys = "disjoint"

    func run() throws {
        let flags = try SharedFile(shared, create: false)
        let (a, b) = keys == "shared" ? ("a", "b") : ("p\(index)/a", "p\(index)/b")
        let transact: (Int) throws -> Bool
        if peer == "sqlite" {
            guard let kv = peers_sqlite_kv_open(directory + "/tx.sqlite") else { throw ToolError("sqlite open failed") }
            transact = { i in peers_sqlite_kv_tx(kv, a, b, UInt8(i & 0xff)) == 0 }
        } else if peer == "pmemobj-own" {
            // Peer: libpmemobj's transaction (two 64-byte ranges snapshotted and rewritten) on
            // this process's own pool, created afresh for the row.
            let path = directory + "/tx-\(index).obj"
            unlink(path)
            guard let pop = peers_pmemobj_create(path) else { throw ToolError("pmemobj_create \(path) failed: errno \(errno)") }
            transact = { i in
                // An abort is a failure here, not a conflict to count out: nothing else uses the pool.
                guard peers_pmemobj_tx(pop, UInt8(i & 0xff)) == 0 else { throw ToolError("pmemobj transaction aborted: errno \(errno)") }
                return true
            }
        } else if peer == "ideal-log" {
            // Peer: the record a redo log would hold for this transaction (both keys and values).
            guard let log = peers_log_open(directory + "/tx.log") else { throw ToolError("cannot open \(directory)/tx.log") }
            var record = [UInt8](repeating: 0, count: 256)
            record.replaceSubrange(0..<a.utf8.count, with: a.utf8)
            record.replaceSubrange(64..<(64 + b.utf8.count), with: b.utf8)
            transact = { i in
                for k in 128..<256 { record[k] = UInt8(i & 0xff) }
                let rc = record.withUnsafeBytes { peers_log_commit(log, $0.baseAddress!, 256) }
                guard rc == 0 else { throw ToolError("log commit failed: errno \(-rc)") }
                return true
            }
        } else {
            let pool = try Pool.open(path: directory + (peer == "pmll-own" ? "/tx-\(index).pool" : "/tx.pool"))
            transact = { i in
                do { try readWrite(pool, .serializable, a, b, UInt8(i & 0xff)) } catch PMLLError.transactionConflict { return false }
                return true
            }
        }
        sayLine("ready")
        while pmll_load32(flags.startFlag) == 0 { usleep(100) }
        var latencies: [Int64] = []
        let before = peers_msync_count() + peers_log_flush_count()
        for i in 0..<count {
            if pmll_load32(flags.stopFlag) != 0 { break }
            let t0 = monotonicNanoseconds()
            if try transact(i) { latencies.append(monotonicNanoseconds() - t0) }
        }
        let ended = monotonicNanoseconds()
        sayResults(ended: ended, count: peers_msync_count() + peers_log_flush_count() - before, latencies: latencies)
    }
}
