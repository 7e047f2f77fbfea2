import ArgumentParser
import CPMLL
import Foundation
import Histogram
import PMLL
import PMLLStressSupport

/// `pmll-stress`: N worker processes run a mix of lock, transaction and queue operations
/// against shared invariants while a supervisor SIGKILLs random workers and starts
/// replacements. At the end it stops everything, recovers, checks every invariant and prints
/// a summary; it exits 0 only if no invariant was violated and nothing hung.
@main
struct Stress: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmll-stress",
        abstract: "Stress PMLL with many processes and random SIGKILLs, then check every invariant.",
        discussion: """
            Exit status: 0 all invariants held; 1 an invariant was violated or a worker hung; 64 usage; \
            130/143 stopped early by SIGINT/SIGTERM with every invariant held (the summary covers the partial run). \
            Workers never outlive the supervisor: each SIGKILLs itself when it exits.
            """,
        subcommands: [StressRun.self, StressWorker.self, StressVerifyPool.self, EtcdHistory.self],
        defaultSubcommand: StressRun.self
    )

    static func main() async { await QuietMain.run(Self.self) }
}

struct StressRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the stress test (default).")

    @Option(help: "Worker processes.") var processes = 4
    @Option(help: "Seconds to run.") var duration = 20.0
    @Option(help: "SIGKILLs of random workers per second (0 = off).") var killRate = 0.5
    @Option(help: "SIGSTOPs of random workers per second, each resumed (SIGCONT) 0.1-0.5 s later (0 = off): a stopped waiter's queue turn is passed, a stopped holder keeps its lock.") var pauseRate = 0.0
    @Option(help: "Seed for the workers' choices and the kill schedule.") var seed: UInt64 = UInt64(Date().timeIntervalSince1970)
    @Option(help: "Pool file (default: $PMLL_POOL, else the per-user default pool).") var pool: String?
    @Option(help: "Operation mix (kinds not named keep their default weight).") var mix = "lock=30,tx=20,queue=20,batch=15,txfree=15"
    @Option(help: "Seconds without any progress before the run counts as hung.") var hangTimeout = 15.0
    @Flag(help: "Print the summary as JSON.") var json = false

    func validate() throws {
        guard (1...64).contains(processes) else { throw ValidationError("--processes must be from 1 to 64") }
        guard duration > 0, duration <= 86_400 else { throw ValidationError("--duration must be more than 0 and at most 86400 seconds") }
        guard killRate >= 0, killRate <= 100 else { throw ValidationError("--kill-rate must be 0 (no kills) to 100 per second") }
        guard pauseRate >= 0, pauseRate <= 100 else { throw ValidationError("--pause-rate must be 0 (no pauses) to 100 per second") }
        guard Mix.validate(mix) else { throw ValidationError("--mix must look like lock=30,tx=20,queue=20,batch=15,txfree=15") }
        guard hangTimeout > 0, hangTimeout <= 3600 else { throw ValidationError("--hang-timeout must be more than 0 and at most 3600 seconds") }
    }

    func run() async throws {
        let path = PoolPath.resolve(pool)
        let pool = try Pool.open(path: path)
        let files = StressFiles(pool: path)
        try prepare(pool, files)
        let stats = try SharedStats(path: files.stats, create: true)
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let tty = isatty(1) != 0 && !json
        var rng = SplitMix(seed: seed)
        // One stats slot per position; a replacement takes over its victim's slot after the
        // victim's counts are folded into `retired`.
        var workers: [Int32: (process: Process, slot: Int)] = [:]
        var incarnations = [UInt64](repeating: 0, count: processes)
        var retired = SharedStats.Totals()
        var killTimes: [Int32: Int64] = [:]
        var kills = 0, pauses = 0
        var resumeAt: [Int32: Int64] = [:]   // stopped workers and when they go on
        func spawn(slot: Int) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: me)
            p.arguments = ["worker", "--pool", path, "--id", "\(slot)", "--incarnation", "\(incarnations[slot])", "--seed", "\(seed)", "--mix", mix]
            // Incarnations take turns: batches made durable file by file or with one syncfs
            // (the tree's batch is large enough for either), and files created by name or
            // unnamed, all four pairs, unless the caller chose.
            var environment = ProcessInfo.processInfo.environment
            let turn = incarnations[slot] &+ UInt64(slot)
            if environment["PMLL_BATCH_SYNC"] == nil { environment["PMLL_BATCH_SYNC"] = turn % 2 == 0 ? "files" : "filesystem" }
            if environment["PMLL_STAGING"] == nil { environment["PMLL_STAGING"] = turn / 2 % 2 == 0 ? "named" : "unnamed" }
            let (key, value) = ParentWatch.entryForChildren
            environment[key] = value
            p.environment = environment
            try p.run()
            workers[p.processIdentifier] = (p, slot)
            incarnations[slot] += 1
        }
        if !json { say("pmll-stress: \(processes) processes, \(duration)s, kill rate \(killRate)/s, pause rate \(pauseRate)/s, seed \(seed), mix \(mix), pool \(path)") }
        for slot in 0..<processes { try spawn(slot: slot) }

        let start = monotonicNanoseconds()
        var nextKill = nextKillTime(after: start, &rng)
        var nextPause = nextEventTime(after: start, rate: pauseRate, &rng)
        var lastTotal: UInt64 = 0, lastProgress = start, lastPrint = start
        var hang: String?
        let stopSignal = StopSignals.install()
        var interruptedBy: Int32?
        while monotonicNanoseconds() - start < Int64(duration * 1e9) {
            usleep(50_000)
            if let signal = stopSignal.received {
                interruptedBy = signal
                if !json { say("\npmll-stress: \(signal == SIGINT ? "SIGINT" : "SIGTERM"): stopping the workers, recovering and checking") }
                break
            }
            let now = monotonicNanoseconds()
            for (pid, due) in resumeAt where now >= due {
                kill(pid, SIGCONT)
                resumeAt[pid] = nil
            }
            if pauseRate > 0 && now >= nextPause,
               let paused = workers.keys.filter({ resumeAt[$0] == nil }).sorted().randomElement(using: &rng) {
                kill(paused, SIGSTOP)
                resumeAt[paused] = now + 100_000_000 + Int64(rng.next() % 400_000_000)
                pauses += 1
                nextPause = nextEventTime(after: now, rate: pauseRate, &rng)
            }
            if killRate > 0 && now >= nextKill, let victim = workers.keys.sorted().randomElement(using: &rng), let entry = workers[victim] {
                resumeAt[victim] = nil
                kill(victim, SIGKILL)
                killTimes[victim] = monotonicNanoseconds()
                kills += 1
                entry.process.waitUntilExit()
                workers[victim] = nil
                stats.retire(entry.slot, into: &retired)
                try spawn(slot: entry.slot)
                nextKill = nextKillTime(after: now, &rng)
            }
            let totals = stats.totals(workers: processes, retired: retired)
            if totals.total != lastTotal { lastTotal = totals.total; lastProgress = now }
            if Double(now - lastProgress) / 1e9 > hangTimeout {
                hang = describeHang(pool)
                break
            }
            if now - lastPrint >= (tty ? 250_000_000 : 1_000_000_000) {
                lastPrint = now
                let line = progressLine(totals, elapsed: Double(now - start) / 1e9, kills: kills)
                if tty { FileHandle.standardOutput.write(Data("\r\u{1B}[K\(line)".utf8)) } else if !json { say(line) }
            }
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        for (pid, entry) in workers { kill(pid, SIGKILL); entry.process.waitUntilExit() }
        if tty { FileHandle.standardOutput.write(Data("\n".utf8)) }

        let summary = try await finish(pool, files, stats: stats, retired: retired, elapsed: elapsed, kills: kills, pauses: pauses, killTimes: killTimes,
                                       hang: hang, interruptedBy: interruptedBy)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(summary), as: UTF8.self))
        } else {
            summary.print()
        }
        if !summary.violations.isEmpty || summary.hang != nil { throw ExitCode(1) }
        if let interruptedBy { throw ExitCode(128 + interruptedBy) }
    }

    /// Fresh counter and logs; accounts funded if the pool has none yet.
    func prepare(_ pool: Pool, _ files: StressFiles) throws {
        try FileManager.default.createDirectory(atPath: files.directory, withIntermediateDirectories: true)
        for file in [files.counter, files.counterLog, files.queueLog, files.takeovers] {
            _ = FileManager.default.createFile(atPath: file, contents: Data())
        }
        try FileManager.default.createDirectory(atPath: files.tree + "/pkg", withIntermediateDirectories: true)
        try pool.transaction { tx in
            for i in 0..<StressFiles.accounts where try tx.get("stress/acct/\(i)") == nil {
                try tx.set("stress/acct/\(i)", String(StressFiles.initialBalance))
            }
        }
    }

    /// When the next SIGKILL is due: exponentially distributed gaps (a Poisson process at
    /// `killRate`); never when the rate is 0.
    func nextKillTime(after now: Int64, _ rng: inout SplitMix) -> Int64 {
        nextEventTime(after: now, rate: killRate, &rng)
    }

    /// Exponentially distributed gaps (a Poisson process at `rate` per second); never at 0.
    func nextEventTime(after now: Int64, rate: Double, _ rng: inout SplitMix) -> Int64 {
        guard rate > 0 else { return .max }
        let u = max(Double(rng.next() % 1_000_000) / 1_000_000, 1e-6)
        let gap = min(-log(u) / rate * 1e9, Double(Int64.max / 2))
        let (due, overflow) = now.addingReportingOverflow(Int64(gap))
        return overflow ? .max : due
    }

    func progressLine(_ t: SharedStats.Totals, elapsed: Double, kills: Int) -> String {
        String(format: "%6.1fs  %d procs  %llu ops (%.0f/s)  lock %llu  tx %llu  queue %llu  batch %llu  txfree %llu",
               elapsed, processes, t.total, Double(t.total) / max(elapsed, 0.001), t.operations[0], t.operations[1], t.operations[2],
               t.operations[3], t.operations[4])
            + (t.operations[5] > 0 ? String(format: "  blob %llu", t.operations[5]) : "")
            + (t.operations[7] > 0 ? String(format: "  shared %llu", t.operations[7]) : "")
            + String(format: "  kills %d  owner deaths %llu  repairs %llu  errors %llu", kills, t.ownerDeaths, t.repairs, t.errors)
    }

    /// Who holds what when nothing moves: locks with holders and queues with waiting work.
    func describeHang(_ pool: Pool) -> String {
        let status = pool.status(includingSelf: false)
        let held = status.locks.filter { $0.state != .free }.map { "lock '\($0.name)' \($0.state.rawValue) by \($0.holder?.description ?? "?") for \($0.heldForSeconds ?? 0)s, \($0.waiters) waiting" }
        let queues = status.queues.filter { $0.pending > 0 }.map { "queue '\($0.name)': \($0.pending) pending, serving ticket \($0.serving)" }
        return "no progress for \(hangTimeout)s: " + (held + queues).joined(separator: "; ")
    }

    func finish(_ pool: Pool, _ files: StressFiles, stats: SharedStats, retired: SharedStats.Totals, elapsed: Double, kills: Int, pauses: Int,
                killTimes: [Int32: Int64], hang: String?, interruptedBy: Int32?) async throws -> Summary {
        var violations: [String] = []
        // Recovery: abandoned queue operations, then the counter under its lock.
        let recovery = try await pool.recover(handlers: ["stress": { _ in }])
        if !(try pool.abandonedOperations()).isEmpty { violations.append("abandoned queue operations remain after recovery") }
        let counterLock = try pool.lock(named: "stress/counter", level: .filesystem)
        let counter = open(files.counter, O_RDWR | O_CLOEXEC)
        defer { close(counter) }
        var repairedAtEnd = false
        try await counterLock.withLock(timeout: .seconds(10)) { grant in
            if grant.previousOwnerDeath != nil {
                StressFiles.writeCounter(counter, StressFiles.countLines(files.counterLog))
                repairedAtEnd = true
            }
        }
        // Invariants.
        let counted = StressFiles.readCounter(counter), logged = StressFiles.countLines(files.counterLog)
        if counted != logged { violations.append("counter is \(counted) but \(logged) increments were logged") }
        violations += try StressVerifyPool.accountViolations(pool)
        violations += try queueOrderViolations(pool, files)
        violations += try StressFiles.blobViolations(pool, workers: processes)
        // The install tree: every file at one version, no staging files left.
        let treeFiles = (try? FileManager.default.contentsOfDirectory(atPath: files.tree + "/pkg")) ?? []
        if let staging = treeFiles.first(where: { $0.hasPrefix(".pmll-") }) { violations.append("install tree has a staging file left: \(staging)") }
        let versions = Set((0..<StressFiles.treeFiles).map { (try? String(contentsOfFile: files.tree + "/pkg/file\($0)", encoding: .utf8))?.prefix { $0.isNumber } ?? "-" })
        if versions.count > 1 { violations.append("install tree is half updated: versions \(versions.sorted())") }
        // Every lock the `names` kind made (in the lock table's extensions too) can be taken.
        for lock in pool.status().locks where lock.name.hasPrefix("stress/names/") {
            do { try await pool.lock(named: lock.name, level: .network).withLock(timeout: .seconds(10)) { _ in } } catch {
                violations.append("lock \(lock.name): \(error)")
                break
            }
        }
        let check = try pool.check()
        violations += check.problems.map { "check: \($0)" }
        // Every worker's audit records, killed writers and drainers included, form one chain.
        if let problem = try pool.verifyAuditLog().problem { violations.append("audit log: \(problem)") }
        let totals = stats.totals(workers: processes, retired: retired)
        if totals.errors > 0 { violations.append("\(totals.errors) operations failed (see stderr)") }
        if totals.tornReads > 0 { violations.append("\(totals.tornReads) shared holds of stress/rw saw its pair half written (a writer inside with them)") }
        // Takeover latency: from a SIGKILL to the next acquirer told of that death.
        var takeover = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
        for line in ((try? String(contentsOfFile: files.takeovers, encoding: .utf8)) ?? "").split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 2, let pid = Int32(f[0]), let t = Int64(f[1]), let killed = killTimes[pid], t > killed {
                _ = takeover.record(UInt64(t - killed))
            }
        }
        let lockStats = pool.status().locks.filter { $0.name.hasPrefix("stress/") }
        return Summary(
            seconds: elapsed, processes: processes, killRate: killRate, seed: seed, kills: kills, pauses: pauses,
            passedQueueTurns: passedTurns(auditDirectory: AuditLog.directory(ofPool: pool.path), queue: "stress-q"),
            operations: Dictionary(uniqueKeysWithValues: zip(SharedStats.kinds, totals.operations)),
            operationsPerSecond: Double(totals.total) / elapsed,
            p50Microseconds: Dictionary(uniqueKeysWithValues: SharedStats.kinds.indices.map { (SharedStats.kinds[$0], totals.quantile(0.5, kind: $0)) }),
            p99Microseconds: Dictionary(uniqueKeysWithValues: SharedStats.kinds.indices.map { (SharedStats.kinds[$0], totals.quantile(0.99, kind: $0)) }),
            ownerDeathsDetected: lockStats.map(\.ownerDeaths).reduce(0, +),
            takeoverP50Milliseconds: takeover.totalCount > 0 ? Double(takeover.valueAtPercentile(50)) / 1e6 : nil,
            takeoverP99Milliseconds: takeover.totalCount > 0 ? Double(takeover.valueAtPercentile(99)) / 1e6 : nil,
            recoveries: Int(totals.repairs) + (repairedAtEnd ? 1 : 0) + recovery.items.count,
            abandonedQueueOperations: try pool.queue(named: "stress-q").stats.abandoned,
            transactions: try pool.transactionStatistics(),
            violations: violations, hang: hang,
            interrupted: interruptedBy.map { $0 == SIGINT ? "SIGINT" : "SIGTERM" })
    }

    /// Queue operations ran one at a time in ticket order: B/E pairs with increasing tickets;
    /// a B without its E only for an operation whose worker was killed (abandoned).
    func queueOrderViolations(_ pool: Pool, _ files: StressFiles) throws -> [String] {
        let records = Dictionary(try pool.queue(named: "stress-q").records.map { ($0.ticket, $0.state) }) { a, _ in a }
        let lines = ((try? String(contentsOfFile: files.queueLog, encoding: .utf8)) ?? "").split(separator: "\n")
        var violations: [String] = []
        var previous: UInt64?, open: UInt64?
        for line in lines {
            let f = line.split(separator: " ")
            guard f.count == 2, let ticket = UInt64(f[1]) else { violations.append("queue log line '\(line)'"); continue }
            if f[0] == "B" {
                if records[ticket] == .void { violations.append("queue operation \(ticket) ran though its ticket is void (passed or given up)") }
                if let o = open, let state = records[o], state != .abandoned {
                    violations.append("queue operation \(o) was interrupted but is recorded \(state.rawValue)")
                }
                if let p = previous, ticket <= p { violations.append("queue ticket \(ticket) ran after \(p)") }
                previous = ticket
                open = ticket
            } else {
                if open != ticket { violations.append("queue operation \(ticket) ended while \(open.map(String.init) ?? "none") was running") }
                open = nil
            }
        }
        return Array(violations.prefix(10))
    }
}

struct Summary: Codable {
    let seconds: Double
    let processes: Int
    let killRate: Double
    let seed: UInt64
    let kills: Int
    /// Workers stopped (SIGSTOP) and resumed.
    let pauses: Int
    /// Tickets of `stress-q` passed because their worker was stopped when its turn came
    /// (those still in the queue's ring).
    let passedQueueTurns: Int
    let operations: [String: UInt64]
    let operationsPerSecond: Double
    let p50Microseconds: [String: Double]
    let p99Microseconds: [String: Double]
    let ownerDeathsDetected: UInt64
    let takeoverP50Milliseconds: Double?
    let takeoverP99Milliseconds: Double?
    let recoveries: Int
    let abandonedQueueOperations: UInt64
    /// The store's counters: conflicts come from the lock-free transfers (txfree).
    let transactions: TransactionStatistics
    let violations: [String]
    let hang: String?
    /// The signal that stopped the run before its duration (the summary is partial).
    let interrupted: String?

    func print() {
        say(String(format: "summary: %.1fs, %d processes, %d kills, %d pauses (%d queue turns passed), %llu operations (%.0f/s): lock %llu, tx %llu, queue %llu, batch %llu, txfree %llu",
                   seconds, processes, kills, pauses, passedQueueTurns, operations.values.reduce(0, +), operationsPerSecond,
                   operations["lock"] ?? 0, operations["tx"] ?? 0, operations["queue"] ?? 0, operations["batch"] ?? 0, operations["txfree"] ?? 0)
            + ((operations["blob"] ?? 0) > 0 ? ", blob \(operations["blob"] ?? 0)" : "")
            + ((operations["shared"] ?? 0) > 0 ? ", shared \(operations["shared"] ?? 0)" : ""))
        say("transactions: \(transactions.commits) committed, \(transactions.conflicts) conflicts, \(transactions.retries) retried, \(transactions.failures) gave up")
        say("latency p50/p99 (µs, log2 buckets): " + SharedStats.kinds.map { "\($0) \(Int(p50Microseconds[$0] ?? 0))/\(Int(p99Microseconds[$0] ?? 0))" }.joined(separator: ", "))
        say("owner deaths detected \(ownerDeathsDetected), takeover p50 \(takeoverP50Milliseconds.map { String(format: "%.2f", $0) } ?? "-") ms, p99 \(takeoverP99Milliseconds.map { String(format: "%.2f", $0) } ?? "-") ms, recoveries \(recoveries), abandoned queue operations \(abandonedQueueOperations)")
        if let interrupted { say("interrupted by \(interrupted) after \(String(format: "%.1f", seconds))s: partial run, invariants checked") }
        if let hang { say("HANG: \(hang)") }
        for v in violations { say("VIOLATION: \(v)") }
        say(violations.isEmpty && hang == nil ? "verdict: OK — every invariant held" : "verdict: FAILED")
    }
}

func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Turns of `queue` passed over stopped processes in the whole run: its `queue.pass` records in
/// the audit files (drained by the verification before). The queue's ring keeps only its last
/// records, so counting passed tickets there missed nearly all of them. Lines are matched on
/// their bytes (`"event":"queue.pass","object":"queue 'NAME' `, the drain's field order), not
/// parsed: a long run leaves millions of records.
func passedTurns(auditDirectory: String, queue: String) -> Int {
    let needle = Data(Array(#""event":"queue.pass","object":"queue '"#.utf8) + Array(queue.utf8) + Array("' ".utf8))
    let files = ((try? FileManager.default.contentsOfDirectory(atPath: auditDirectory)) ?? []).filter { $0.hasSuffix(".log") }
    var count = 0
    for file in files {
        guard let data = FileManager.default.contents(atPath: auditDirectory + "/" + file) else { continue }
        var from = data.startIndex
        while let found = data.range(of: needle, in: from..<data.endIndex) {
            count += 1
            from = found.upperBound
        }
    }
    return count
}
