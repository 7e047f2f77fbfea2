import Foundation
import Testing

/// Scheduled consistency checks (`check.interval_s`): long-running `pmll` commands share one
/// schedule per pool, record each run in it, and a damaged pool is logged, counted and recorded.
@Suite("Scheduled checks and backups", .serialized)
struct ScheduledCheckTests {
    static func lastCheck(_ env: [String: String]) throws -> [String: Any]? {
        let status = try run(Binaries.pmll, ["status", "--json"], environment: env)
        let json = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        return json?["lastCheck"] as? [String: Any]
    }

    @Test func twoProcessesShareOneScheduleAndADamagedPoolIsRecorded() throws {
        let scratch = Scratch()
        let pool = scratch.file("s.pool"), config = scratch.file("c.json")
        try #"{"pool": {"path": "\#(pool)"}, "check": {"interval_s": 1}}"#.write(toFile: config, atomically: true, encoding: .utf8)
        let env = ["PMLL_CONFIG": config, "PMLL_POOL": ""]
        #expect(try run(Binaries.pmll, ["lock", "damage-me", "--", "true"], environment: env).status == 0)

        let start = Date()
        let a = try Child(Binaries.pmll, ["lock", "a", "--", "sleep", "6"], environment: env)
        let b = try Child(Binaries.pmll, ["lock", "b", "--", "sleep", "6"], environment: env)
        defer { a.killTree(); b.killTree(); a.wait(); b.wait() }
        let deadline = Date().addingTimeInterval(20)
        while (try Self.lastCheck(env))?["runs"] as? Int ?? 0 < 2 && Date() < deadline { usleep(100_000) }
        let before = try #require(try Self.lastCheck(env))
        #expect(before["ok"] as? Bool == true)

        // Damage the name of a lock entry in the file (the mapping sees it at once).
        let bytes = try Data(contentsOf: URL(fileURLWithPath: pool))
        let name = Data("damage-me".utf8)
        let entry = try #require(bytes.range(of: name)).lowerBound
        let fd = open(pool, O_WRONLY)
        var flipped: UInt8 = bytes[entry] ^ 0x20
        #expect(pwrite(fd, &flipped, 1, off_t(entry)) == 1)
        close(fd)

        var after = before
        while (after["ok"] as? Bool) != false && Date() < deadline.addingTimeInterval(10) {
            usleep(100_000)
            after = try #require(try Self.lastCheck(env))
        }
        #expect(after["ok"] as? Bool == false, "\(after)")
        #expect((after["failures"] as? Int ?? 0) >= 1)
        #expect(((after["problems"] as? [String])?.first).map { $0.contains("amage") } == true, "\(after)")
        #expect(a.wait(timeout: 30) == 0 && b.wait(timeout: 30) == 0)
        let elapsed = Date().timeIntervalSince(start)
        let runs = try #require(try Self.lastCheck(env))["runs"] as? Int ?? 0
        // One schedule for both processes: about one run a second, not two.
        #expect(runs <= Int(elapsed) + 2, "\(runs) runs in \(elapsed) s")
        #expect((a.stderr + b.stderr).contains("scheduled check found problems"), "logged: \(a.stderr) \(b.stderr)")
        let metrics = try run(Binaries.pmll, ["metrics"], environment: env)
        #expect(metrics.stdout.contains("pmll_check_last_success{pool=\"\(pool)\"} 0.0"), "\(metrics.stdout.split(separator: "\n").filter { $0.contains("check") })")
    }

    /// `backup.interval_s`: the same shared schedule takes rotated backups, each a sound pool.
    @Test func scheduledBackupsRotateAndAreSound() throws {
        let scratch = Scratch()
        let pool = scratch.file("b.pool"), dir = scratch.file("backups"), config = scratch.file("c.json")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try #"{"pool": {"path": "\#(pool)"}, "backup": {"directory": "\#(dir)", "keep": 2, "interval_s": 1}}"#.write(toFile: config, atomically: true, encoding: .utf8)
        let env = ["PMLL_CONFIG": config, "PMLL_POOL": ""]
        #expect(try run(Binaries.pmll, ["state", "set", "k=v"], environment: env).status == 0)
        let start = Date()
        let a = try Child(Binaries.pmll, ["lock", "a", "--", "sleep", "4"], environment: env)
        let b = try Child(Binaries.pmll, ["lock", "b", "--", "sleep", "4"], environment: env)
        #expect(a.wait(timeout: 30) == 0 && b.wait(timeout: 30) == 0)
        let elapsed = Date().timeIntervalSince(start)
        let backups = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(backups.count == 2, "keep 2: \(backups)")
        for backup in backups {
            #expect(try run(Binaries.pmll, ["state", "get", "--pool", dir + "/" + backup, "k"]).stdout == "v")
            #expect(try run(Binaries.pmll, ["check", "--pool", dir + "/" + backup]).status == 0)
        }
        let status = try run(Binaries.pmll, ["status", "--json"], environment: env)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        let last = try #require(json["lastBackup"] as? [String: Any])
        let runs = last["runs"] as? Int ?? 0
        #expect(last["ok"] as? Bool == true && runs >= 2 && runs <= Int(elapsed) + 2, "\(runs) backups in \(elapsed) s: \(last)")
        // Without a directory, a backup interval is a configuration error.
        let bad = scratch.file("bad.json")
        try #"{"backup": {"interval_s": 60}}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        let refused = try run(Binaries.pmll, ["config", "show", "--config", bad])
        #expect(refused.status == 78 && refused.stderr.contains("scheduled backups need backup.directory"), "\(refused.stderr)")
    }

    /// A run that cannot even be claimed (the store is full) is retried about once a second,
    /// not in a loop: the command still finishes and says so a few times, not thousands.
    @Test func anUnclaimableRunIsRetriedCalmly() throws {
        let scratch = Scratch()
        let config = scratch.file("c.json")
        try #"{"pool": {"path": "\#(scratch.file("full.pool"))", "key_capacity": 16, "size_limit": 16777216}, "check": {"interval_s": 1}}"#.write(toFile: config, atomically: true, encoding: .utf8)
        let env = ["PMLL_CONFIG": config, "PMLL_POOL": ""]
        var filled = 0
        while filled < 64, try run(Binaries.pmll, ["state", "set", "k\(filled)=v"], environment: env).status == 0 { filled += 1 }
        #expect(filled < 64, "the store never filled")
        let r = try run(Binaries.pmll, ["lock", "x", "--", "sleep", "3"], environment: env)
        #expect(r.status == 0, "\(r.stderr.suffix(300))")
        let warnings = r.stderr.components(separatedBy: "could not claim scheduled work").count - 1
        #expect(warnings >= 1 && warnings <= 8, "\(warnings) warnings in 3 s")
    }
}
