import Foundation
import PMLLStressSupport

/// What every crash run needs: spawning a child with the fault knobs set (and nothing else
/// inherited from them), and the pool image a power failure would leave.
enum Crashing {
    /// The pool as it is after a power failure: the shadow (what was persisted) plus a random
    /// subset of the 64-byte units the child changed since their last persist.
    static func powerImage(pool: String, shadow: String, rng: inout SplitMix) throws {
        var current = try Data(contentsOf: URL(fileURLWithPath: pool))
        let durable = try Data(contentsOf: URL(fileURLWithPath: shadow))
        current.withUnsafeMutableBytes { cur in
            durable.withUnsafeBytes { dur in
                for unit in stride(from: 0, to: min(cur.count, dur.count), by: 64) {
                    let end = min(unit + 64, cur.count)
                    if memcmp(cur.baseAddress! + unit, dur.baseAddress! + unit, end - unit) != 0 && rng.next() % 2 == 0 {
                        memcpy(cur.baseAddress! + unit, dur.baseAddress! + unit, end - unit)   // this unit was lost
                    }
                }
            }
        }
        try current.write(to: URL(fileURLWithPath: pool))
    }

    static func spawn(_ exe: String, _ args: [String], env: [String: String]) throws -> Int32 {
        try spawnCapturing(exe, args, env: env).status
    }

    static func spawnCapturing(_ exe: String, _ args: [String], env: [String: String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = args
        var environment = ProcessInfo.processInfo.environment
        for key in ["PMLL_CRASH_AT", "PMLL_CRASH_TRACE", "PMLL_POWER_SHADOW", "PMLL_TEST_DROP_PERSIST"] { environment[key] = nil }
        environment.merge(env) { $1 }
        let (key, value) = ParentWatch.entryForChildren
        environment[key] = value
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
