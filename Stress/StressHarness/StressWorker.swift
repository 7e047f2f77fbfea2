import ArgumentParser
import Foundation
import PMLL
import PMLLStressSupport

/// One worker process: loops over a seeded mix of operations against the shared invariants.
///  - lock: a counter file and an append-only log next to the pool, changed under one lock;
///    after an owner death the counter is rebuilt from the log (the log is the truth);
///  - tx: a transfer between two accounts in a transaction under both accounts' locks;
///  - txfree: the same transfer under no lock at all: serializable transactions alone must
///    keep the total (a transfer whose retries all conflict writes nothing, and is not an error);
///  - queue: an operation of the queue `stress-q` that logs its begin and end;
///  - batch: under lock `stress/tree`, an atomic file batch rewriting an install tree whose
///    files must always all carry the same version;
///  - blob: (off unless named in --mix) checks one of this worker's large values against its
///    record, then replaces one with a value of up to 1 MiB and adds a small key, in one
///    transaction: the store's index and block space grow and churn under kills;
///  - shared: (off unless named in --mix) lock `stress/rw`, one time in four exclusively to
///    write a pair of numbers in a file one after the other (a killed writer leaves them
///    apart; the next exclusive holder, told of the death, repairs), else shared to read
///    both: a shared holder that finds them apart with no owner death reported was let in
///    beside a writer.
struct StressWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "worker", shouldDisplay: false)
    @Option var pool: String
    @Option var id: Int
    @Option var seed: UInt64
    @Option(help: "How many workers used this slot before (a new random stream each time).") var incarnation: UInt64 = 0
    @Option var mix: String

    func run() async throws {
        ParentWatch.armFromEnvironment()
        precondition(SharedStats.operationWord(SharedStats.kinds.count) <= SharedStats.histogramWord
            && SharedStats.histogramWord + SharedStats.kinds.count * SharedStats.buckets <= SharedStats.slotBytes / 8, "stats slot too small")
        let files = StressFiles(pool: pool)
        let stats = try SharedStats(path: files.stats, create: false)
        stats.slot(id)[0] = UInt64(getpid())
        let pool = try Pool.open(path: pool)
        let counterLock = try pool.lock(named: "stress/counter", level: .filesystem)
        let accounts = try (0..<StressFiles.accounts).map { try pool.lock(named: "stress/acct/\($0)", level: .package) }
        let queue = try pool.queue(named: "stress-q")
        let treeLock = try pool.lock(named: "stress/tree", level: .filesystem)
        let rwLock = try pool.lock(named: "stress/rw", level: .filesystem)
        let pair = open(files.pair, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        let weights = Mix.parse(mix)
        var rng = SplitMix(seed: seed ^ (UInt64(id) &* 0x9E37_79B9) ^ (incarnation &* 0xBF58_476D_1CE4_E5B9))
        let counter = open(files.counter, O_RDWR | O_CLOEXEC), log = open(files.counterLog, O_WRONLY | O_APPEND | O_CLOEXEC)
        let queueLog = open(files.queueLog, O_WRONLY | O_APPEND | O_CLOEXEC)

        while true {
            let kind = weights.pick(&rng)
            let start = monotonicNanoseconds()
            do {
                switch kind {
                case 0:
                    try await counterLock.withLock(timeout: .seconds(30)) { grant in
                        if let death = grant.previousOwnerDeath {
                            stats.add(id, SharedStats.deathsWord)
                            appendLine(files.takeovers, "\(death.pid) \(monotonicNanoseconds())")
                            StressFiles.writeCounter(counter, StressFiles.countLines(files.counterLog))
                            stats.add(id, SharedStats.repairsWord)
                        }
                        let value = StressFiles.readCounter(counter)
                        StressFiles.writeCounter(counter, value + 1)
                        _ = "\(id)\n".withCString { write(log, $0, strlen($0)) }
                    }
                case 1:
                    let (a, b, amount) = StressFiles.transfer(&rng)
                    try await pool.withLocks([accounts[a], accounts[b]], timeout: .seconds(30)) { grant in
                        if let death = grant.previousOwnerDeath {
                            stats.add(id, SharedStats.deathsWord)
                            appendLine(files.takeovers, "\(death.pid) \(monotonicNanoseconds())")
                        }
                        try StressFiles.move(pool, amount, from: a, to: b)
                    }
                case 3:
                    try await treeLock.withLock(timeout: .seconds(30)) { grant in
                        if let death = grant.previousOwnerDeath {
                            stats.add(id, SharedStats.deathsWord)
                            appendLine(files.takeovers, "\(death.pid) \(monotonicNanoseconds())")
                        }
                        let version = Int(StressFiles.readTreeVersion(files.tree) ?? "0") ?? 0
                        let data = Array("\(version + 1)".utf8)
                        _ = try pool.apply(FileBatch((0..<StressFiles.treeFiles).map {
                            .write(path: "pkg/file\($0)", data: data + [UInt8](repeating: 0x2E, count: 200), mode: 0o644)
                        }), root: files.tree, atomic: true)
                    }
                case 5:
                    try StressFiles.blob(pool, worker: id, rng: &rng)
                case 6:
                    // One of 200,000 names, new until the pool holds them all: the lock table
                    // grows under kills (and owner deaths happen in its extensions).
                    let name = "stress/names/\(rng.next() % StressFiles.names)"
                    try await pool.lock(named: name, level: .network).withLock(timeout: .seconds(30)) { grant in
                        if let death = grant.previousOwnerDeath {
                            stats.add(id, SharedStats.deathsWord)
                            appendLine(files.takeovers, "\(death.pid) \(monotonicNanoseconds())")
                        }
                    }
                case 7 where rng.next() % 4 == 0:
                    try await rwLock.withLock(timeout: .seconds(30)) { grant in
                        var (a, b) = StressFiles.readPair(pair)
                        if let death = grant.previousOwnerDeath {
                            stats.add(id, SharedStats.deathsWord)
                            appendLine(files.takeovers, "\(death.pid) \(monotonicNanoseconds())")
                            if a != b { b = a; StressFiles.writePair(pair, second: b) }
                            stats.add(id, SharedStats.repairsWord)
                        }
                        StressFiles.writePair(pair, first: a + 1)
                        sched_yield()   // a reader let in now sees the pair apart
                        StressFiles.writePair(pair, second: a + 1)
                    }
                case 7:
                    try await rwLock.withSharedLock(timeout: .seconds(30)) { grant in
                        let first = StressFiles.readPair(pair)
                        sched_yield()
                        let second = StressFiles.readPair(pair)
                        let apart = first.0 != first.1 || second.0 != second.1 || first != second
                        if apart && grant.previousOwnerDeath == nil {
                            stats.add(id, SharedStats.tornReadsWord)
                            FileHandle.standardError.write(Data("worker \(id): shared holder of stress/rw saw \(first) then \(second)\n".utf8))
                        }
                    }
                case 4:
                    let (a, b, amount) = StressFiles.transfer(&rng)
                    do {
                        try StressFiles.move(pool, amount, from: a, to: b)
                    } catch PMLLError.transactionConflict {
                        continue   // every retry conflicted: nothing written (counted in the store's statistics)
                    }
                default:
                    try await queue.execute(kind: "stress", timeout: .seconds(30)) { op in
                        _ = "B \(op.ticket)\n".withCString { write(queueLog, $0, strlen($0)) }
                        _ = "E \(op.ticket)\n".withCString { write(queueLog, $0, strlen($0)) }
                    }
                }
                stats.add(id, SharedStats.operationWord(kind))
                stats.latency(id, kind: kind, nanoseconds: monotonicNanoseconds() - start)
            } catch {
                stats.add(id, SharedStats.errorsWord)
                FileHandle.standardError.write(Data("worker \(id): \(error)\n".utf8))
            }
        }
    }
}

/// Where the shared invariants live, next to the pool.
struct StressFiles {
    static let accounts = 8
    /// Lock names the `names` kind draws from.
    static let names: UInt64 = 200_000

    /// Two different accounts and an amount.
    static func transfer(_ rng: inout SplitMix) -> (Int, Int, Int) {
        let a = Int(rng.next() % UInt64(accounts))
        let b = (a + 1 + Int(rng.next() % UInt64(accounts - 1))) % accounts
        return (a, b, Int(rng.next() % 50) + 1)
    }

    /// One transaction moving up to `amount` from account `a` to account `b`.
    static func move(_ pool: Pool, _ amount: Int, from a: Int, to b: Int) throws {
        try pool.transaction { tx in
            let from = Int(try tx.getString("stress/acct/\(a)") ?? "0")!
            let to = Int(try tx.getString("stress/acct/\(b)") ?? "0")!
            let moved = min(from, amount)
            try tx.set("stress/acct/\(a)", String(from - moved))
            try tx.set("stress/acct/\(b)", String(to + moved))
        }
    }
    static let initialBalance = 1000
    let directory: String
    init(pool: String) { directory = pool + ".stress" }
    var stats: String { directory + "/stats" }
    var counter: String { directory + "/counter" }
    var counterLog: String { directory + "/counter.log" }
    var queueLog: String { directory + "/queue.log" }
    var takeovers: String { directory + "/takeovers" }
    var tree: String { directory + "/tree" }
    /// The pair the `shared` kind writes under `stress/rw`: two numbers, 8 bytes each.
    var pair: String { directory + "/rw" }

    static func readPair(_ fd: Int32) -> (UInt64, UInt64) {
        var words: (UInt64, UInt64) = (0, 0)
        _ = withUnsafeMutableBytes(of: &words) { pread(fd, $0.baseAddress, 16, 0) }
        return words
    }

    static func writePair(_ fd: Int32, first: UInt64) {
        var v = first
        _ = withUnsafeBytes(of: &v) { pwrite(fd, $0.baseAddress, 8, 0) }
    }

    static func writePair(_ fd: Int32, second: UInt64) {
        var v = second
        _ = withUnsafeBytes(of: &v) { pwrite(fd, $0.baseAddress, 8, 8) }
    }
    static let treeFiles = 20

    /// The version the install tree's first file carries (its leading digits).
    static func readTreeVersion(_ tree: String) -> String? {
        guard let text = try? String(contentsOfFile: tree + "/pkg/file0", encoding: .utf8) else { return nil }
        return String(text.prefix { $0.isNumber })
    }

    static func readCounter(_ fd: Int32) -> Int {
        var buffer = [UInt8](repeating: 0, count: 20)
        let n = pread(fd, &buffer, 20, 0)
        return n > 0 ? Int(String(decoding: buffer[..<n], as: UTF8.self).trimmingCharacters(in: .whitespaces)) ?? 0 : 0
    }

    /// One pwrite of a fixed-width number: a SIGKILL cannot tear it.
    static func writeCounter(_ fd: Int32, _ value: Int) {
        let text = Array(String(value).padding(toLength: 20, withPad: " ", startingAt: 0).utf8)
        _ = pwrite(fd, text, 20, 0)
    }

    static func countLines(_ path: String) -> Int {
        ((try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data()).filter { $0 == 0x0A }.count
    }
}

extension StressFiles {
    static let blobSlots = 4
    static let blobMaximum = 1 << 20
    static let smallKeys = 2000

    /// The `blob` operation: verify a random slot of this worker's values (a value and its
    /// record `n:length` commit together), then write the slot anew.
    static func blob(_ pool: Pool, worker: Int, rng: inout SplitMix) throws {
        let check = Int(rng.next() % UInt64(blobSlots)), slot = Int(rng.next() % UInt64(blobSlots))
        let n = Int(rng.next() % 1_000_000), length = 1 + Int(rng.next() % UInt64(blobMaximum))
        try pool.transaction { tx in
            if let meta = try tx.getString("stress/blobmeta/\(worker)/\(check)") {
                let parts = meta.split(separator: ":").compactMap { Int($0) }
                guard parts.count == 2, try tx.get("stress/blob/\(worker)/\(check)") == FillPattern.value(prefix: "stress\(worker)", index: parts[0], length: parts[1]) else {
                    throw ToolError("blob \(worker)/\(check) does not match its record \(meta)")
                }
            }
            try tx.set("stress/blob/\(worker)/\(slot)", FillPattern.value(prefix: "stress\(worker)", index: n, length: length))
            try tx.set("stress/blobmeta/\(worker)/\(slot)", "\(n):\(length)")
            try tx.set("stress/small/\(worker)/\(n % smallKeys)", "\(n)")
        }
    }

    /// Every worker's large values against their records (at the end of a run).
    static func blobViolations(_ pool: Pool, workers: Int) throws -> [String] {
        var violations: [String] = []
        for worker in 0..<workers {
            for slot in 0..<blobSlots {
                guard let meta = try pool.value(for: "stress/blobmeta/\(worker)/\(slot)").map({ String(decoding: $0, as: UTF8.self) }) else { continue }
                let parts = meta.split(separator: ":").compactMap { Int($0) }
                let value = try pool.value(for: "stress/blob/\(worker)/\(slot)")
                if parts.count != 2 || value != FillPattern.value(prefix: "stress\(worker)", index: parts[0], length: parts[1]) {
                    violations.append("large value \(worker)/\(slot) does not match its record \(meta)")
                }
            }
        }
        return violations
    }
}

/// Operation mix, e.g. "lock=40,tx=30,queue=30".
struct Mix {
    let weights: [Int]

    static func parse(_ text: String) -> Mix {
        var weights = [30, 20, 20, 15, 15, 0, 0, 0]
        for part in text.split(separator: ",") {
            let kv = part.split(separator: "=")
            guard kv.count == 2, let i = SharedStats.kinds.firstIndex(of: String(kv[0])), let w = Int(kv[1]), w >= 0 else { continue }
            weights[i] = w
        }
        return Mix(weights: weights)
    }

    static func validate(_ text: String) -> Bool {
        text.split(separator: ",").allSatisfy { part in
            let kv = part.split(separator: "=")
            return kv.count == 2 && SharedStats.kinds.contains(String(kv[0])) && Int(kv[1]).map { $0 >= 0 } == true
        } && parse(text).weights.reduce(0, +) > 0
    }

    func pick(_ rng: inout SplitMix) -> Int {
        var r = Int(rng.next() % UInt64(weights.reduce(0, +)))
        for (i, w) in weights.enumerated() {
            if r < w { return i }
            r -= w
        }
        return 0
    }
}
