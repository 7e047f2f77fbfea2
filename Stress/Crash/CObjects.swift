import ArgumentParser
import Foundation
import PMLL
import PMLLStressSupport

/// `pmll-crash c-objects --program PATH`: the C interface's objects under the crash suite.
/// PATH is the C test program (Tests/C/pmll_c_test.c, built against an installed prefix): its
/// `objects` mode commits `pmem_write`s to a named object together with a key, under a lock,
/// acknowledging each commit in an fsynced file; `objects-check` checks that the object is
/// never torn, agrees with the key, holds the last acknowledged commit or the one after, and
/// that the pool checks clean. Every crash point the C program reaches, at sampled hits, under
/// both fault models; recovery is killed once in every other case.
struct CObjects: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "c-objects", abstract: "Crash the C interface's object transactions at every point.")

    @Option(help: "The C test program (built from Tests/C/pmll_c_test.c).") var program: String
    @Option(help: "Fault models: process, power or both.") var model = "both"
    @Option(help: "Hits sampled per crash point.") var hitsPerPoint = 3
    @Option(help: "Power-failure images per crash case.") var powerSamples = 2
    @Option(help: "Steps of the C workload.") var steps = 12
    @Option var seed: UInt64 = 7
    @Option var directory: String?
    @Option(help: "Self-test: drop the persist calls of this site (e.g. tx.log) and expect violations.") var dropPersist: String?

    func run() async throws {
        let dir = directory ?? (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()) + "/pmll-crash-c-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { if directory == nil { try? FileManager.default.removeItem(atPath: dir) } }
        let base = dir + "/base.pool", pool = dir + "/case.pool", shadow = dir + "/case.shadow", ack = dir + "/ack", trace = dir + "/trace"
        var options = PoolOptions()
        options.size = 4 << 20
        options.keyCapacity = 256
        _ = try Pool.open(path: base, options: options)

        func reset() throws {
            for path in [pool, ack, pool + ".audit"] { try? FileManager.default.removeItem(atPath: path) }
            try FileManager.default.copyItem(atPath: base, toPath: pool)
            if FileManager.default.fileExists(atPath: base + ".audit") { try FileManager.default.copyItem(atPath: base + ".audit", toPath: pool + ".audit") }
        }
        try reset()
        guard try Crashing.spawn(program, ["objects", pool, ack, "\(steps)"], env: ["PMLL_CRASH_TRACE": trace]) == 0 else {
            throw ValidationError("the C workload fails without crashes")
        }
        var counts: [String: Int] = [:]
        for name in (try String(contentsOfFile: trace, encoding: .utf8)).split(separator: "\n") { counts[String(name), default: 0] += 1 }

        var rng = SplitMix(seed: seed)
        var runs = 0, bad: [String] = []
        var rows = [["crash point", "hits/run", "model", "runs", "violations"]]
        for point in CrashInjection.points {
            let hits = counts[point] ?? 0
            guard hits > 0 else { continue }
            let sampled = hits <= hitsPerPoint ? Array(1...hits) : (0..<hitsPerPoint).map { 1 + $0 * (hits - 1) / max(1, hitsPerPoint - 1) }
            for m in model == "both" ? ["process", "power"] : [model] {
                var caseRuns = 0, caseBad = 0
                for hit in Set(sampled).sorted() {
                    for sample in 0..<(m == "power" ? powerSamples : 1) {
                        try reset()
                        var env = ["PMLL_CRASH_AT": "\(point):\(hit)"]
                        if let dropPersist { env["PMLL_TEST_DROP_PERSIST"] = dropPersist }
                        if m == "power" {
                            try? FileManager.default.removeItem(atPath: shadow)
                            try FileManager.default.copyItem(atPath: base, toPath: shadow)
                            env["PMLL_POWER_SHADOW"] = shadow
                        }
                        _ = try Crashing.spawn(program, ["objects", pool, ack, "\(steps)"], env: env)
                        if m == "power" { try Crashing.powerImage(pool: pool, shadow: shadow, rng: &rng) }
                        if (hit + sample) % 2 == 0 {
                            _ = try Crashing.spawn(program, ["objects-check", pool, ack], env: ["PMLL_CRASH_AT": "tx.rolled-back:1"])
                        }
                        let (status, output) = try Crashing.spawnCapturing(program, ["objects-check", pool, ack], env: [:])
                        runs += 1
                        caseRuns += 1
                        if status != 0 {
                            caseBad += 1
                            bad.append("\(point):\(hit) (\(m)): \(output.split(separator: "\n").filter { !$0.hasPrefix("ok") }.joined(separator: "; "))")
                        }
                    }
                }
                rows.append([point, "\(hits)", m, "\(caseRuns)", "\(caseBad)"])
            }
        }
        let widths = rows[0].indices.map { c in rows.map { $0[c].count }.max()! }
        for row in rows { print(zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")) }
        for line in bad.prefix(20) { print("violation at \(line)") }
        print("\(runs) runs, \(bad.count) with violations")
        if let dropPersist {
            print(bad.isEmpty ? "self-test FAILED: dropping persist site '\(dropPersist)' went unnoticed" : "self-test: dropping persist site '\(dropPersist)' was caught")
            if bad.isEmpty { throw ExitCode(1) }
        } else if !bad.isEmpty || runs == 0 {
            throw ExitCode(1)
        }
    }
}
