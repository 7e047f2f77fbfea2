import Foundation
import Testing

/// The stress harness as part of the test run: 4 processes for 20 s with random SIGKILLs;
/// every invariant must hold and nothing may hang.
@Suite("Stress", .serialized)
struct StressTests {
    @Test func shortStressRunWithKillsKeepsEveryInvariant() throws {
        let scratch = Scratch()
        let result = try run(Binaries.directory + "/pmll-stress",
                             ["--processes", "4", "--duration", "20", "--kill-rate", "1", "--seed", "2026", "--pool", scratch.file("stress.pool"),
                              "--mix", "blob=5,names=5,shared=5", "--json"],
                             timeout: 300)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect((summary["violations"] as? [String])?.isEmpty == true)
        #expect(summary["hang"] == nil)
        #expect((summary["kills"] as? Int ?? 0) >= 5)
        #expect((summary["ownerDeathsDetected"] as? Int ?? 0) >= 1)
        let operations = try #require(summary["operations"] as? [String: Int])
        #expect(operations.values.allSatisfy { $0 > 100 }, "\(operations)")
    }

    /// `pmll-bench --directory D` works in a subdirectory of D and removes only that: it once
    /// emptied and removed D itself (a run with `--directory /var/tmp` removed /var/tmp).
    @Test func aBenchmarkLeavesTheDirectoryItIsGivenAsItWas() throws {
        let scratch = Scratch()
        let given = scratch.file("given"), sentinel = given + "/keep.txt"
        try FileManager.default.createDirectory(atPath: given, withIntermediateDirectories: true)
        try "mine".write(toFile: sentinel, atomically: true, encoding: .utf8)
        let result = try run(Binaries.directory + "/pmll-bench",
                             ["audit", "--directory", given, "--only", "commit", "--rounds", "1", "--tmpfs-operations", "20", "--disk-operations", "20"],
                             timeout: 120)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        #expect(result.stdout.contains(given + "/pmll-auditbench"), "\(result.stdout)")
        #expect(try String(contentsOfFile: sentinel, encoding: .utf8) == "mine")
        #expect(try FileManager.default.contentsOfDirectory(atPath: given) == ["keep.txt"])
    }

    /// `pmll-bench tx --scaling-only`, which `Stress/targets` reads for issue 19's 4 : 1, runs
    /// every peer from four processes and from one: PMLL, SQLite, libpmemobj (a pool per
    /// process), and on a disk the ideal log; each row commits something.
    @Test(arguments: ["/dev/shm", "/var/tmp"])
    func theScalingBenchmarkRunsEveryPeer(parent: String) throws {
        let scratch = Scratch(in: parent)
        let result = try run(Binaries.directory + "/pmll-bench",
                             ["tx", "--scaling-only", "--seconds", "0.2", "--rounds", "1", "--directory", scratch.path, "--json"],
                             timeout: 120)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]])
        var kinds = ["pmll serializable disjoint", "sqlite disjoint", "pmemobj own pools"]
        if parent == "/var/tmp" { kinds.append("ideal log disjoint") }
        for kind in kinds {
            for processes in [4, 1] {
                let row = rows.first { $0["kind"] as? String == kind && $0["processes"] as? Int == processes }
                #expect((row?["transactions"] as? Int ?? 0) > 0, "\(kind), \(processes) processes: \(String(describing: row))")
            }
        }
        #expect(rows.count == kinds.count * 2, "\(rows.map { $0["kind"] ?? "?" })")
    }

    @Test(arguments: [["--processes", "0"], ["--mix", "lock=x"], ["--kill-rate=-1"], ["--duration", "0"],
                      ["--duration", "100000"], ["--hang-timeout", "0"], ["--processes", "many"]])
    func badArgumentsAreOneLineUsageErrors(arguments: [String]) throws {
        let scratch = Scratch()
        let result = try run(Binaries.directory + "/pmll-stress", arguments + ["--pool", scratch.file("never.pool")])
        #expect(result.status == 64)
        #expect(result.stderr.hasPrefix("pmll-stress: ") && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: scratch.file("never.pool")))
    }

    @Test func aRunWithoutKillsCompletes() throws {
        let scratch = Scratch()
        let result = try run(Binaries.directory + "/pmll-stress",
                             ["--processes", "3", "--duration", "3", "--kill-rate", "0", "--pool", scratch.file("calm.pool"), "--json"], timeout: 120)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(summary["kills"] as? Int == 0)
        #expect((summary["violations"] as? [String])?.isEmpty == true)
    }

    /// Processes whose command line names `pool` (the workers carry `--pool PATH`).
    func processes(naming pool: String) -> [Int32] {
        let me = getpid()
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init).filter { pid in
            guard pid != me, let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return cmdline.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == pool }
        }
    }

    @Test func workersDieWithAKilledSupervisor() throws {
        let scratch = Scratch()
        let pool = scratch.file("orphans.pool")
        let supervisor = try Child(Binaries.directory + "/pmll-stress", ["--processes", "3", "--duration", "120", "--pool", pool])
        let end = Date().addingTimeInterval(30)
        while processes(naming: pool).count < 4 && Date() < end { usleep(20_000) }
        #expect(processes(naming: pool).count == 4)   // the supervisor and 3 workers
        supervisor.kill(SIGKILL)
        supervisor.wait()
        usleep(1_000_000)
        #expect(processes(naming: pool).isEmpty, "still running: \(processes(naming: pool))")
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func aStopSignalGivesAPartialSummaryWithTheInvariantsChecked(signal: Int32) throws {
        let scratch = Scratch()
        let pool = scratch.file("stop.pool")
        let supervisor = try Child(Binaries.directory + "/pmll-stress", ["--processes", "3", "--duration", "120", "--pool", pool, "--json"])
        let end = Date().addingTimeInterval(30)
        while processes(naming: pool).count < 4 && Date() < end { usleep(20_000) }
        usleep(2_000_000)
        supervisor.kill(signal)
        #expect(supervisor.wait(timeout: 60) == 128 + signal, "\(supervisor.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(supervisor.stdout.utf8)) as? [String: Any])
        #expect(summary["interrupted"] as? String == (signal == SIGTERM ? "SIGTERM" : "SIGINT"))
        #expect((summary["violations"] as? [String])?.isEmpty == true)
        #expect((summary["seconds"] as? Double ?? 999) < 60)
        #expect(processes(naming: pool).isEmpty)
    }
}
