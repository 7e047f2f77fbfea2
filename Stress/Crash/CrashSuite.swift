import ArgumentParser
import Foundation
import PMLL
import PMLLStressSupport

/// `pmll-crash`: for every crash point compiled into the library (and several hits of each),
/// runs the scripted workload in a child that dies there, then recovers (sometimes killing
/// recovery too) and checks the invariants, under two fault models:
///  - process: SIGKILL; every store that reached the mapping survives;
///  - power: only what was persisted survives, plus a random subset of the 64-byte units
///    dirtied since (the child runs with PMLL_POWER_SHADOW; the image is rebuilt afterwards).
/// Prints a table point × model × runs × violations; exits 0 only if there is no violation.
@main
struct CrashSuite: AsyncParsableCommand {
    static func main() async { await QuietMain.run(Self.self) }

    static let configuration = CommandConfiguration(
        commandName: "pmll-crash",
        abstract: "Crash-injection suite: kill a workload at every crash point, recover, check invariants.",
        subcommands: [Run.self, Workload.self, Verify.self, CObjects.self],
        defaultSubcommand: Run.self
    )
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Enumerate crash points (default).")

    @Option(help: "Fault models: process, power or both.") var model = "both"
    @Option(help: "Hits sampled per crash point, spread over the run (0: every hit).") var hitsPerPoint = 0
    @Option(help: "Power-failure images built per crash case (random subsets of dirty units).") var powerSamples = 2
    @Option(help: "Workload steps.") var steps = 24
    @Option var seed: UInt64 = 42
    @Option(help: "Working directory (default: a new one under /dev/shm or /tmp).") var directory: String?
    @Option(help: "Self-test: drop the persist calls of this site (e.g. tx.log) and expect violations.") var dropPersist: String?
    @Flag var json = false

    struct Case: Codable {
        let point: String
        let hit: Int
        let model: String
        let crashedRecovery: Bool
        let violations: [String]
    }

    func run() async throws {
        let dir = directory ?? (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()) + "/pmll-crash-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { if directory == nil { try? FileManager.default.removeItem(atPath: dir) } }
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let base = dir + "/base.pool", pool = dir + "/case.pool", shadow = dir + "/case.shadow", ack = dir + "/ack", trace = dir + "/trace", bootID = dir + "/boot_id"

        // A pool with the accounts funded, everything durable.
        var options = PoolOptions()
        // Small tables, so that the workload's fill steps make the key index and the block
        // space grow (crash points growth.*).
        options.size = 2 << 20
        options.keyCapacity = 16
        options.queueCapacity = 2
        // And the lock table: the workload's new lock names make it grow.
        options.lockCapacity = 16
        do {
            let p = try Pool.open(path: base, options: options)
            try p.transaction { tx in for i in 0..<Workload.accounts { try tx.set("acct/\(i)", String(Workload.initialBalance)) } }
            _ = try p.queue(named: "crash-q")
        }

        // How often each point is hit in a full run.
        try reset(from: base, to: pool, ack: ack)
        try? FileManager.default.removeItem(atPath: trace)
        guard try Crashing.spawn(me, ["workload", "--pool", pool, "--ack", ack, "--steps", "\(steps)", "--seed", "\(seed)"], env: ["PMLL_CRASH_TRACE": trace, "PMLL_REDO_LOG": "65536"]) == 0 else {
            throw ValidationError("the workload fails without crashes")
        }
        var counts: [String: Int] = [:]
        for name in (try String(contentsOfFile: trace, encoding: .utf8)).split(separator: "\n") { counts[String(name), default: 0] += 1 }

        var rng = SplitMix(seed: seed)
        var cases: [Case] = []
        let models = model == "both" ? ["process", "power"] : [model]
        // A 64 KiB redo log (made by the workload's first update): a 16 MiB one would be
        // written, and copied into the power model's durable image, in every run; a small one
        // also wraps and is settled within a run.
        var dropEnv = ["PMLL_REDO_LOG": "65536"]
        if let dropPersist { dropEnv["PMLL_TEST_DROP_PERSIST"] = dropPersist }
        for point in CrashInjection.points {
            let hits = counts[point] ?? 0
            guard hits > 0 else { continue }
            let sampled = hitsPerPoint == 0 || hits <= hitsPerPoint ? Array(1...hits) : (0..<hitsPerPoint).map { 1 + $0 * (hits - 1) / max(1, hitsPerPoint - 1) }
            for hit in Set(sampled).sorted() {
                for m in models {
                    for sample in 0..<(m == "power" ? powerSamples : 1) {
                        try reset(from: base, to: pool, ack: ack)
                        var env = dropEnv
                        env["PMLL_CRASH_AT"] = "\(point):\(hit)"
                        if m == "power" {
                            try? FileManager.default.removeItem(atPath: shadow)
                            try FileManager.default.copyItem(atPath: base, toPath: shadow)
                            env["PMLL_POWER_SHADOW"] = shadow
                        }
                        _ = try Crashing.spawn(me, ["workload", "--pool", pool, "--ack", ack, "--steps", "\(steps)", "--seed", "\(seed)"], env: env)
                        var recoveryEnv = dropEnv
                        if m == "power" {
                            try Crashing.powerImage(pool: pool, shadow: shadow, rng: &rng)
                            // A power failure is followed by a reboot: a new boot id, which tells
                            // the pool that the page cache, and every write not flushed, is gone.
                            try UUID().uuidString.lowercased().write(toFile: bootID, atomically: true, encoding: .utf8)
                            recoveryEnv["PMLL_BOOT_ID_FILE"] = bootID
                        }
                        // Every other hit (in both models) also kills recovery once, at its first step.
                        let crashRecovery = (hit + sample) % 2 == 0
                        if crashRecovery {
                            _ = try Crashing.spawn(me, ["verify", "--pool", pool, "--ack", ack], env: recoveryEnv.merging(["PMLL_CRASH_AT": "tx.rolled-back:1"]) { $1 })
                            _ = try Crashing.spawn(me, ["verify", "--pool", pool, "--ack", ack], env: recoveryEnv.merging(["PMLL_CRASH_AT": "queue.recovered:1"]) { $1 })
                        }
                        let (_, out) = try Crashing.spawnCapturing(me, ["verify", "--pool", pool, "--ack", ack], env: recoveryEnv)
                        let violations = (try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: [String]])?["violations"] ?? ["verify printed no report: \(out)"]
                        cases.append(Case(point: point, hit: hit, model: m, crashedRecovery: crashRecovery, violations: violations))
                    }
                }
            }
        }
        report(cases, counts: counts)
        let failed = cases.contains { !$0.violations.isEmpty }
        if let dropPersist {
            print(failed ? "self-test: dropping persist site '\(dropPersist)' was caught" : "self-test FAILED: dropping persist site '\(dropPersist)' went unnoticed")
            if !failed { throw ExitCode(1) }
        } else if failed {
            throw ExitCode(1)
        }
    }

    func report(_ cases: [Case], counts: [String: Int]) {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: (try? encoder.encode(cases)) ?? Data(), as: UTF8.self))
            return
        }
        var rows = [["crash point", "hits/run", "model", "runs", "recovery killed", "violations"]]
        let keys = Array(Set(cases.map { "\($0.point)|\($0.model)" })).sorted()
        for key in keys {
            let parts = key.split(separator: "|").map(String.init)
            let group = cases.filter { $0.point == parts[0] && $0.model == parts[1] }
            rows.append([parts[0], "\(counts[parts[0]] ?? 0)", parts[1], "\(group.count)", "\(group.filter(\.crashedRecovery).count)",
                         "\(group.filter { !$0.violations.isEmpty }.count)"])
        }
        let widths = rows[0].indices.map { c in rows.map { $0[c].count }.max()! }
        for row in rows { print(zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")) }
        let bad = cases.filter { !$0.violations.isEmpty }
        for c in bad.prefix(20) { print("violation at \(c.point):\(c.hit) (\(c.model)): \(c.violations.joined(separator: "; "))") }
        print("\(cases.count) runs, \(bad.count) with violations")
    }

    func reset(from base: String, to pool: String, ack: String) throws {
        try? FileManager.default.removeItem(atPath: pool)
        try? FileManager.default.removeItem(atPath: ack)
        try? FileManager.default.removeItem(atPath: Workload.tree(for: pool))
        try? FileManager.default.removeItem(atPath: pool + ".audit")
        try FileManager.default.copyItem(atPath: base, toPath: pool)
        // The pool's audit files go with it (a copy without them misses the base's records).
        if FileManager.default.fileExists(atPath: base + ".audit") { try FileManager.default.copyItem(atPath: base + ".audit", toPath: pool + ".audit") }
    }
}
