import Foundation
import Testing

/// `pmll backup` and `pmll restore` with real processes: backups of a pool under a
/// `pmll-stress` run with kills, each checked and restored; refusals that leave everything as
/// it was.
@Suite("Backup and restore", .serialized)
struct BackupTests {
    static var stress: String { Binaries.directory + "/pmll-stress" }

    /// Backups taken every half second while 4 workers transfer between accounts, queue,
    /// lock and apply batches, and one is SIGKILLed every second: each backup passes the full
    /// check, and each restores to a pool on which the stress run's own invariants hold
    /// (recovery leaves nothing abandoned, the accounts keep their total, check clean).
    @Test func backupsOfAPoolUnderStressWithKillsRestoreToSoundPools() throws {
        let scratch = Scratch()
        let pool = scratch.file("live.pool"), dir = scratch.file("backups")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let stressRun = try Child(Self.stress, ["run", "--processes", "4", "--duration", "8", "--kill-rate", "1", "--seed", "7", "--pool", pool])
        defer { stressRun.kill(); stressRun.wait() }
        // Wait for the run to have made its pool and accounts.
        let ready = Date().addingTimeInterval(30)
        while (try? Binaries.runPMLL(["state", "get", "--pool", pool, "stress/acct/0"]).status) != 0 && Date() < ready { usleep(50_000) }
        var blocked: [Double] = []
        for _ in 0..<8 {
            let backup = try Binaries.runPMLL(["backup", "--pool", pool, "--rotate", "--keep", "20", "--json", dir])
            #expect(backup.status == 0, "\(backup.stderr)")
            if let json = try? JSONSerialization.jsonObject(with: Data(backup.stdout.utf8)) as? [String: Any],
               let report = json["report"] as? [String: Any], let ns = report["writersBlockedNanoseconds"] as? Double {
                blocked.append(ns / 1e6)
            }
            usleep(1_100_000)   // names have one-second resolution
        }
        #expect(stressRun.wait(timeout: 120) == 0, "the stress run itself: \(stressRun.stdout.suffix(600))")
        let backups = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".backup") }.sorted()
        #expect(backups.count >= 6, "\(backups)")
        for (i, name) in backups.enumerated() {
            let backup = dir + "/" + name
            let check = try Binaries.runPMLL(["check", "--pool", backup])
            #expect(check.status == 0, "\(name): \(check.stdout) \(check.stderr)")
            let restored = scratch.file("restored-\(i).pool")
            let restore = try Binaries.runPMLL(["restore", "--pool", restored, backup])
            #expect(restore.status == 0, "\(name): \(restore.stderr)")
            let verify = try run(Self.stress, ["verify-pool", "--pool", restored])
            #expect(verify.status == 0, "\(name): \(verify.stdout) \(verify.stderr)")
        }
        #expect(blocked.count == 8)
        print("writers held off (ms): \(blocked.map { String(format: "%.2f", $0) }.joined(separator: " "))")
    }

    @Test func restoreRefusesAPoolInUseAndABadBackupAndChangesNothing() throws {
        let scratch = Scratch()
        let pool = scratch.file("p.pool"), backup = scratch.file("p.backup")
        #expect(try Binaries.runPMLL(["state", "set", "--pool", pool, "v=old"]).status == 0)
        #expect(try Binaries.runPMLL(["backup", "--pool", pool, backup]).status == 0)
        #expect(try Binaries.runPMLL(["state", "set", "--pool", pool, "v=new"]).status == 0)

        // In use: refused, the pool untouched, no temporary left.
        let holder = try Child.worker("hold", "--pool", pool, "--lock", "x", "--seconds", "30")
        #expect(holder.waitForEvent("acquired") != nil)
        let refused = try Binaries.runPMLL(["restore", "--pool", pool, backup])
        #expect(refused.status == 75 && refused.stderr.hasPrefix("pmll: pool '\(pool)' is open in other processes"), "\(refused.status) \(refused.stderr)")
        holder.kill()
        holder.wait()
        #expect(try Binaries.runPMLL(["state", "get", "--pool", pool, "v"]).stdout == "new")

        // A damaged backup: refused by the check, the pool untouched.
        let damaged = scratch.file("damaged.backup")
        var bytes = try Data(contentsOf: URL(fileURLWithPath: backup))
        let store = try Self.storeIndexOffset(pool: backup)
        for i in 0..<(256 << 10) where bytes[store + i] != 0 { bytes[store + i] ^= 0xFF }   // every used key slot
        try bytes.write(to: URL(fileURLWithPath: damaged))
        let bad = try Binaries.runPMLL(["restore", "--pool", pool, damaged])
        #expect(bad.status == 65 && bad.stderr.hasPrefix("pmll: pool '\(damaged)' is corrupt: its copy fails"), "\(bad.status) \(bad.stderr)")
        #expect(try Binaries.runPMLL(["state", "get", "--pool", pool, "v"]).stdout == "new")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.contains("pmll-tmp") }
        #expect(leftovers.isEmpty, "\(leftovers)")

        // Not a pool at all.
        let text = scratch.file("notes.txt")
        try String(repeating: "x", count: 100_000).write(toFile: text, atomically: true, encoding: .utf8)
        #expect(try Binaries.runPMLL(["restore", "--pool", pool, text]).status == 65)
        #expect(try Binaries.runPMLL(["restore", "--pool", pool, scratch.file("missing")]).status == 66)

        // Closed: restored, and what it holds is the backup's.
        let restored = try Binaries.runPMLL(["restore", "--pool", pool, backup])
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try Binaries.runPMLL(["state", "get", "--pool", pool, "v"]).stdout == "old")
    }

    @Test func rotationKeepsTheNewest() throws {
        let scratch = Scratch()
        let pool = scratch.file("r.pool"), dir = scratch.file("rotated")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try Binaries.runPMLL(["state", "set", "--pool", pool, "k=v"]).status == 0)
        for _ in 0..<4 {
            #expect(try Binaries.runPMLL(["backup", "--pool", pool, "--rotate", "--keep", "2", dir]).status == 0)
            usleep(1_050_000)
        }
        let kept = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(kept.count == 2 && kept.allSatisfy { $0.hasPrefix("r.pool.") && $0.hasSuffix("Z.backup") }, "\(kept)")
        #expect(try Binaries.runPMLL(["backup", "--pool", pool, "--rotate", scratch.file("nowhere")]).status == 66)
        #expect(try Binaries.runPMLL(["backup", "--pool", pool, "--keep", "0", "--rotate", dir]).status == 64)
    }

    /// Where the state store's key index starts in a pool file, from `pmll status --json`'s
    /// section sizes (header, process table, locks, queues, then the store's superblock page).
    static func storeIndexOffset(pool: String) throws -> Int {
        let status = try Binaries.runPMLL(["status", "--pool", pool, "--json"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        let sections = try #require(json["sections"] as? [String: Int])
        return (sections["header"] ?? 0) + (sections["processTable"] ?? 0) + (sections["lockTable"] ?? 0) + (sections["queueTable"] ?? 0) + (sections["auditRing"] ?? 0) + 4096
    }
}

extension Binaries {
    static func runPMLL(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try run(pmll, arguments)
    }
}
