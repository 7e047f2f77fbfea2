import Foundation
import PMLL
import Testing

/// `pmll audit prune` (Docs/Audit.md "Removing old files"): the oldest files go, every cut is
/// a signed checkpoint first, and `verify` starts at the oldest file left only on that anchor.
@Suite("Audit log pruning", .serialized)
struct AuditPruneTests {
    /// A pool whose log has rotated through several 4 KiB files.
    static func rotatedPool(_ scratch: Scratch) throws -> String {
        let path = scratch.file("p.pool")
        var options = PoolOptions()
        options.auditFileBytes = 4096
        let pool = try Pool.open(path: path, options: options)
        for i in 0..<200 { try pool.transaction(isolation: .none) { tx in try tx.set("k\(i)", "v") } }
        try pool.drainAuditLog()
        return path
    }

    static func logFiles(_ pool: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: pool + ".audit").filter { $0.hasSuffix(".log") && $0 != "checkpoints.log" }.sorted()
    }

    @Test func theNewestFilesStayAndVerifyStartsAtASignedCut() throws {
        let scratch = Scratch()
        let pool = try Self.rotatedPool(scratch)
        let before = try Self.logFiles(pool)
        #expect(before.count >= 5, "\(before)")

        let pruned = try run(Binaries.pmll, ["audit", "prune", "--pool", pool, "--keep", "2", "--json"])
        #expect(pruned.status == 0, "\(pruned.stderr)")
        let report = try JSONDecoder().decode(AuditPruning.self, from: Data(pruned.stdout.utf8))
        #expect(report.files == Array(before.prefix(before.count - 2)))
        let left = try Self.logFiles(pool)
        #expect(left.first == before[before.count - 2], "\(left)")
        let through = try #require(report.prunedThrough)

        let verified = try run(Binaries.pmll, ["audit", "verify", "--pool", pool])
        #expect(verified.status == 0 && verified.stdout.contains("records #1–#\(through) were pruned"), "\(verified)")
        let v = try Pool.open(path: pool).verifyAuditLog()
        #expect(v.problem == nil && v.prunedThrough == through && v.firstSeq == through + 1, "\(v)")
        let shown = try run(Binaries.pmll, ["audit", "show", "--pool", pool])
        #expect(shown.stdout.hasPrefix("#\(through + 1) ") && shown.stdout.contains("admin.prune ok: files \(before[0])–"), "\(shown.stdout)")

        // Without the signed anchor the start is a hole again; with a forged one, a bad signature.
        let checkpoints = pool + ".audit/checkpoints.log"
        let signed = try String(contentsOfFile: checkpoints, encoding: .utf8)
        let anchor = try #require(signed.split(separator: "\n").first { $0.contains("\"size\":\(through),") })
        try signed.replacingOccurrences(of: anchor + "\n", with: "").write(toFile: checkpoints, atomically: false, encoding: .utf8)
        let unanchored = try run(Binaries.pmll, ["audit", "verify", "--pool", pool])
        #expect(unanchored.status == 65 && unanchored.stderr.contains("records 1–\(through) are missing"), "\(unanchored.stderr)")
        let forged = anchor.replacingOccurrences(of: "\"signature\":\"", with: "\"signature\":\"00")
        try signed.replacingOccurrences(of: String(anchor), with: String(forged.dropLast(3)) + "\"}").write(toFile: checkpoints, atomically: false, encoding: .utf8)
        #expect(try run(Binaries.pmll, ["audit", "verify", "--pool", pool]).status == 65)
        try signed.write(toFile: checkpoints, atomically: false, encoding: .utf8)

        // Again, down to one file: still one chain from a signed cut.
        #expect(try run(Binaries.pmll, ["audit", "prune", "--pool", pool, "--keep", "1"]).status == 0)
        let again = try Pool.open(path: pool).verifyAuditLog()
        #expect(again.problem == nil && (again.prunedThrough ?? 0) > through && again.files <= 2, "\(again)")
        let nothing = try run(Binaries.pmll, ["audit", "prune", "--pool", pool, "--keep", "9"])
        #expect(nothing.status == 0 && nothing.stdout.contains("nothing to prune"), "\(nothing)")
        let bad = try run(Binaries.pmll, ["audit", "prune", "--pool", pool, "--keep", "0"])
        #expect(bad.status == 64 && bad.stderr.hasPrefix("pmll: "), "\(bad)")
    }

    /// Killed after its second file: the oldest file left continues a signed cut (all cuts are
    /// signed before any file goes), so the log verifies; a second prune finishes the job.
    @Test func aPruneKilledBetweenFilesLeavesALogThatVerifies() throws {
        let scratch = Scratch()
        let pool = try Self.rotatedPool(scratch)
        let before = try Self.logFiles(pool)
        let killed = try run(Binaries.pmll, ["audit", "prune", "--pool", pool, "--keep", "1"], environment: ["PMLL_CRASH_AT": "audit.pruned-file:2"])
        #expect(killed.status != 0)
        #expect(try Self.logFiles(pool) == Array(before.dropFirst(2)))
        let v = try Pool.open(path: pool).verifyAuditLog()
        #expect(v.problem == nil && v.prunedThrough != nil, "\(v)")
        #expect(try run(Binaries.pmll, ["audit", "prune", "--pool", pool, "--keep", "1"]).status == 0)
        #expect(try Pool.open(path: pool).verifyAuditLog().problem == nil)
    }

    /// A broken chain is not pruned (the damage would be hidden): refused, nothing removed.
    @Test func aDamagedLogIsNotPruned() throws {
        let scratch = Scratch()
        let pool = try Self.rotatedPool(scratch)
        let before = try Self.logFiles(pool)
        try FileManager.default.removeItem(atPath: pool + ".audit/" + before[2])
        let refused = try run(Binaries.pmll, ["audit", "prune", "--pool", pool, "--keep", "1"])
        #expect(refused.status == 65 && refused.stderr.contains("audit file \(before[2]) is missing"), "\(refused.stderr)")
        #expect(try Self.logFiles(pool) == before.filter { $0 != before[2] })
    }
}
