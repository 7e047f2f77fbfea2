import Foundation
import Testing

/// Recovery policies from the configuration (`recovery.default`, `.queues`, `.kinds`,
/// `.max_attempts`) applied by `pmll recover` to operations of `pmll queue exec` processes
/// killed with SIGKILL; `--dry-run` changes nothing.
@Suite("Recovery policies", .serialized)
struct RecoveryPolicyTests {
    /// A `pmll queue exec` killed while its command runs: its operation is abandoned. The
    /// command writes `marker`; the kill waits for its bytes, not for the file: `>>` creates
    /// the file before `echo` writes, and a kill in between (seen once under CI load) left it
    /// empty.
    static func abandon(queue: String, pool: String, command: String, marker: String) throws {
        let exec = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool, queue, "--", "/bin/sh", "-c", command])
        let deadline = Date().addingTimeInterval(60)
        func written() -> Bool { ((try? FileManager.default.attributesOfItem(atPath: marker)[.size] as? Int) ?? 0) > 0 }
        while !written() && Date() < deadline { usleep(10_000) }
        // The pmll process first: it must die holding its operation, not see its command end.
        exec.killParentFirst()
        exec.wait()
        try #require(written(), "the command never wrote \(marker)")
    }

    static func recover(_ pool: String, config: String, _ extra: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
        try run(Binaries.pmll, ["recover", "--pool", pool, "--config", config] + extra)
    }

    @Test func retryRunsTheCommandAgainAndQuarantineSetsItAside() throws {
        let scratch = Scratch()
        let pool = scratch.file("r.pool"), out = scratch.file("out"), go = scratch.file("go")
        let retry = scratch.file("retry.json"), quarantine = scratch.file("quarantine.json")
        try #"{"recovery": {"queues": {"installs": "retry"}, "default": "quarantine"}}"#.write(toFile: retry, atomically: true, encoding: .utf8)
        try #"{"recovery": {"default": "quarantine"}}"#.write(toFile: quarantine, atomically: true, encoding: .utf8)
        // Runs once, is killed while it waits for `go`; the retry finds `go` and finishes.
        let command = "echo run >> '\(out)'; [ -e '\(go)' ] || sleep 100"
        try Self.abandon(queue: "installs", pool: pool, command: command, marker: out)
        try Self.abandon(queue: "downloads", pool: pool, command: "echo other >> '\(out).2'; sleep 100", marker: out + ".2")

        let dry = try Self.recover(pool, config: retry, ["--dry-run"])
        #expect(dry.status == 0, "\(dry.stderr)")
        #expect(dry.stdout.contains("would retry it as a new operation") && dry.stdout.contains("would quarantine it"), "\(dry.stdout)")
        let afterDry = try String(contentsOfFile: out, encoding: .utf8)
        #expect(afterDry == "run\n", "a dry run runs nothing: \(afterDry.debugDescription)")

        try "".write(toFile: go, atomically: true, encoding: .utf8)
        let done = try Self.recover(pool, config: retry)
        #expect(done.status == 0, "\(done.stderr)")
        #expect(done.stdout.contains("retried: queue 'installs'"), "\(done.stdout)")
        #expect(done.stdout.contains("quarantined (the recovery policy quarantines kind 'exec' of queue 'downloads')"), "\(done.stdout)")
        let afterRetry = try String(contentsOfFile: out, encoding: .utf8)
        #expect(afterRetry == "run\nrun\n", "the retry ran the recorded command once more: \(afterRetry.debugDescription)")
        let show = try run(Binaries.pmll, ["queue", "show", "--pool", pool, "installs", "--json"])
        #expect(show.stdout.contains("\"succeeded\""), "the retry is an operation of the queue: \(show.stdout)")

        // Nothing is met twice; the quarantine lists it until released.
        #expect(try Self.recover(pool, config: retry).stdout.contains("no abandoned operations"))
        let listed = try Self.recover(pool, config: quarantine, ["--quarantined"])
        #expect(listed.stdout.hasPrefix("quarantined: queue 'downloads' ticket 0"), "\(listed.stdout)")
        #expect(try Self.recover(pool, config: quarantine, ["--release", "downloads/0"]).status == 0)
        #expect(try Self.recover(pool, config: quarantine, ["--quarantined"]).stdout.contains("no quarantined operations"))
        #expect(try Self.recover(pool, config: quarantine, ["--release", "downloads/0"]).status == 1)
    }

    /// A handler that keeps failing: counted over successive recoveries, then quarantined.
    @Test func aHandlerThatKeepsFailingIsQuarantinedAfterMaxAttempts() throws {
        let scratch = Scratch()
        let pool = scratch.file("m.pool"), marker = scratch.file("m")
        let config = scratch.file("c.json")
        try #"{"recovery": {"default": "handler", "max_attempts": 2}}"#.write(toFile: config, atomically: true, encoding: .utf8)
        try Self.abandon(queue: "q", pool: pool, command: "echo started > '\(marker)'; sleep 100", marker: marker)
        for attempt in 1...2 {
            let r = try Self.recover(pool, config: config, ["--exec-handler", "exit 3"])
            #expect(r.stdout.contains("handler failed"), "attempt \(attempt): \(r.stdout)")
        }
        let dry = try Self.recover(pool, config: config, ["--exec-handler", "exit 3", "--dry-run"])
        #expect(dry.stdout.contains("would quarantine (recovery failed 2 times)"), "\(dry.stdout)")
        let third = try Self.recover(pool, config: config, ["--exec-handler", "exit 3"])
        #expect(third.stdout.contains("quarantined (recovery failed 2 times)"), "\(third.stdout)")
        #expect(try Self.recover(pool, config: config, ["--quarantined"]).stdout.contains("ticket 0"))
        let bad = scratch.file("bad.json")
        try #"{"recovery": {"kinds": {"exec": "redo"}}}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        let refused = try Self.recover(pool, config: bad)
        #expect(refused.status == 78 && refused.stderr.contains("key 'recovery.kinds.exec': 'redo' is not one of handler, retry, abandon, quarantine"), "\(refused.stderr)")
    }
}
