import Foundation
import CPMLL
import PMLL
import PMLLCore
import PMLLStressSupport
import Testing

/// The pool grows while processes use it (Docs/PoolFormat.md "Growth"): the key index and the
/// block space move into areas appended to the file, every attached process follows, the size
/// limit is a typed error with the pool intact, and a kill at any step of a growth loses nothing.
@Suite("Growth")
struct GrowthTests {
    static func smallOptions() -> PoolOptions {
        var options = PoolOptions()
        options.size = 4 << 20
        options.keyCapacity = 16
        options.queueCapacity = 2
        return options
    }

    /// Commits `value` under keys v0, v1, … one per transaction until a commit fails or
    /// `atMost` are stored: how many were, and the failure.
    static func fill(_ pool: Pool, with value: [UInt8], atMost: Int) -> (stored: Int, failure: PMLLError?) {
        var stored = 0
        while stored < atMost {
            do {
                try pool.transaction { tx in try tx.set("v\(stored)", value) }
                stored += 1
            } catch let error as PMLLError {
                return (stored, error)
            } catch {
                return (stored, nil)
            }
        }
        return (stored, nil)
    }

    @Test func fourProcessesGrowASmallPoolAndEveryOneFollows() throws {
        let scratch = Scratch()
        let path = scratch.file("g.pool")
        // This participant attaches before any growth and must see everything after.
        let pool = try Pool.open(path: path, options: Self.smallOptions())
        let before = try pool.storeUsage()
        let keys = 2500, maximum = 1500
        let workers = try (0..<4).map {
            try Child.worker("fill", "--pool", path, "--prefix", "w\($0)", "--keys", "\(keys)", "--batch", "50", "--max-value", "\(maximum)")
        }
        for (i, w) in workers.enumerated() {
            let done = w.waitForEvent("done", timeout: 240)
            #expect(w.wait(timeout: 60) == 0, "worker \(i): \(w.stderr)")
            #expect(done?["bad"] as? Int == 0 && done?["written"] as? Int == keys, "worker \(i): \(String(describing: done))")
        }
        var wrong = 0
        for w in 0..<4 {
            for i in 0..<keys where try pool.value(for: "w\(w)/\(i)") != FillPattern.value(prefix: "w\(w)", index: i, maximum: maximum) { wrong += 1 }
        }
        #expect(wrong == 0)
        let after = try pool.storeUsage()
        #expect(after.keysUsed >= 4 * keys && after.keyCapacity >= 8 * keys, "\(after)")
        #expect(after.growths >= 6 && after.fileBytes > before.fileBytes && after.blockCount > before.blockCount, "\(after)")
        #expect(try pool.check().ok)
        // A fresh process reads the grown pool, and status says how it grew.
        #expect(try run(Binaries.pmll, ["check", "--pool", path]).status == 0)
        let status = try run(Binaries.pmll, ["status", "--pool", path])
        #expect(status.stdout.contains("growths") && status.stdout.contains("of its 64.0 GiB limit"), "\(status.stdout)")
        let json = try run(Binaries.pmll, ["status", "--pool", path, "--json"])
        let store = (try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])?["store"] as? [String: Any]
        #expect(store?["growths"] as? Int == after.growths && store?["sizeLimit"] as? Int == 64 << 30, "\(json.stdout)")
    }

    @Test func growthStopsAtTheSizeLimitAndThePoolStaysIntact() throws {
        let scratch = Scratch()
        let path = scratch.file("l.pool")
        var options = Self.smallOptions()
        options.sizeLimit = 6 << 20
        let pool = try Pool.open(path: path, options: options)
        let value = [UInt8](repeating: 7, count: 60_000)
        let (stored, failure) = Self.fill(pool, with: value, atMost: 200)
        guard case let .sizeLimitReached(p, limit, needed)? = failure else {
            Issue.record("expected sizeLimitReached, got \(String(describing: failure)) after \(stored) values")
            return
        }
        #expect(p == path && limit == 6 << 20 && needed > limit)
        #expect(stored > 20, "the pool should have grown before reaching its limit: \(stored) values")
        for i in 0..<stored { #expect(try pool.value(for: "v\(i)") == value) }
        #expect(try pool.value(for: "v\(stored)") == nil)
        let usage = try pool.storeUsage()
        #expect(usage.fileBytes <= 6 << 20 && usage.growths >= 1, "\(usage)")
        #expect(try pool.check().ok)
        // At the command line: one line, exit 73.
        let r = try run(Binaries.pmll, ["state", "set", "--pool", path, "big=" + String(repeating: "x", count: 60_000)])
        #expect(r.status == 73 && r.stderr.hasPrefix("pmll: pool full: '\(path)' would have to grow to ") && r.stderr.split(separator: "\n").count == 1, "\(r)")
        // Deletes make room again without growth.
        try pool.transaction { tx in for i in 0..<stored { try tx.delete("v\(i)") } }
        try pool.transaction { tx in try tx.set("again", value) }
        #expect(try pool.check().ok)
    }

    /// A process killed at each step of a growth of the key index: the keys committed before
    /// are all there, the killed transaction left nothing, and the next commit grows the pool.
    @Test(arguments: ["growth.reserved", "growth.filled", "growth.logged", "growth.applied", "growth.committed"])
    func aKillAtEveryStepOfAGrowthLosesNothing(point: String) throws {
        let scratch = Scratch()
        let path = scratch.file("c.pool")
        do {
            let pool = try Pool.open(path: path, options: Self.smallOptions())
            try pool.transaction { tx in for i in 0..<8 { try tx.set("old\(i)", "v\(i)") } }
        }
        let victim = try Child.worker("tx-set", "--pool", path, "new0=a", "new1=b", "new2=c", "new3=d", environment: ["PMLL_CRASH_AT": point])
        #expect(victim.wait() == 128 + SIGKILL)
        let pool = try Pool.open(path: path)
        #expect(try pool.check().ok)
        for i in 0..<8 { #expect(try pool.value(for: "old\(i)") == Array("v\(i)".utf8)) }
        for i in 0..<4 { #expect(try pool.value(for: "new\(i)") == nil) }
        let grown = try pool.storeUsage()
        #expect(grown.growths == (point == "growth.committed" ? 1 : 0), "\(grown)")
        try pool.transaction { tx in for i in 0..<40 { try tx.set("more\(i)", String(repeating: "m", count: 300)) } }
        #expect(try pool.storeUsage().keyCapacity >= 96)
        #expect(try pool.check().ok)
    }

    /// A read-only participant attached before the growth follows it, a backup of a grown pool
    /// restores to a sound pool, and a full file system is a typed error, never SIGBUS.
    @Test func readersBackupsAndAFullFileSystemFollowGrowth() throws {
        let scratch = Scratch()
        let path = scratch.file("r.pool")
        let pool = try Pool.open(path: path, options: Self.smallOptions())
        var readOnly = PoolOptions()
        readOnly.readOnly = true
        let reader = try Pool.open(path: path, options: readOnly)
        let w = try Child.worker("fill", "--pool", path, "--prefix", "r", "--keys", "3000", "--max-value", "3000")
        #expect(w.waitForEvent("done", timeout: 240)?["bad"] as? Int == 0)
        #expect(w.wait() == 0)
        var wrong = 0
        for i in stride(from: 0, to: 3000, by: 7) where try reader.value(for: "r/\(i)") != FillPattern.value(prefix: "r", index: i, maximum: 3000) { wrong += 1 }
        #expect(wrong == 0)
        let copy = scratch.file("copy.pool")
        let report = try pool.backup(to: copy)
        #expect(report.bytes > 4 << 20, "\(report)")
        let restored = try Pool.open(path: copy)
        #expect(try restored.check().ok)
        #expect(try restored.value(for: "r/2999") == FillPattern.value(prefix: "r", index: 2999, maximum: 3000))

        // A file system with room for the created pool and a little more (needs root to mount).
        let small = scratch.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        guard try run("/bin/mount", ["-t", "tmpfs", "-o", "size=6m", "tmpfs", small]).status == 0 else { return }
        defer { _ = try? run("/bin/umount", [small]) }
        let cramped = try Pool.open(path: small + "/p.pool", options: Self.smallOptions())
        let value = [UInt8](repeating: 3, count: 60_000)
        let (stored, failure) = Self.fill(cramped, with: value, atMost: 500)
        guard case let .noSpace(p, reason)? = failure else {
            Issue.record("expected noSpace, got \(String(describing: failure)) after \(stored) values")
            return
        }
        #expect(p == small + "/p.pool" && reason.contains("no room to grow"), "\(reason)")
        for i in 0..<stored { #expect(try cramped.value(for: "v\(i)") == value) }
        #expect(try cramped.check().ok)
        let r = try run(Binaries.pmll, ["state", "set", "--pool", small + "/p.pool", "big=" + String(repeating: "x", count: 60_000)])
        #expect(r.status == 73 && r.stderr.hasPrefix("pmll: no space for pool"), "\(r)")
    }

    /// On a disk, the areas an index leaves when it doubles give their blocks back (the file
    /// keeps its size: the areas read as zeros); opening the pool in another process does not
    /// allocate them again (only holes elsewhere, as in a sparse copy); and a growth that
    /// reuses a free area allocates it whole first, so that no write meets a hole.
    @Test func freeAreasGiveTheirBlocksBackOnADisk() throws {
        let directory = "/var/tmp/pmll-test-\(getpid())-free-areas"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/g.pool"
        func allocated() -> Int {
            var st = stat()
            return stat(path, &st) == 0 ? Int(st.st_blocks) * 512 : -1
        }
        let slack = 64 << 10   // the file system's own blocks (an extent tree)
        let pool = try Pool.open(path: path, options: Self.smallOptions())
        let value = [UInt8](repeating: 1, count: 100)
        for first in stride(from: 0, to: 3_000, by: 250) {
            try pool.transaction { tx in for k in first..<(first + 250) { try tx.set("k\(k)", value) } }
        }
        let grown = try pool.storeUsage()
        #expect(grown.keyCapacity >= 8_192 && grown.freeAreaBytes >= 1 << 20, "\(grown)")
        #expect(allocated() <= grown.fileBytes - grown.freeAreaBytes + slack, "\(allocated()) bytes allocated of \(grown)")
        #expect(allocated() >= grown.fileBytes - grown.freeAreaBytes)

        // Another process attaches: the free areas stay holes.
        #expect(try run(Binaries.pmll, ["status", "--pool", path]).status == 0)
        #expect(allocated() <= grown.fileBytes - grown.freeAreaBytes + slack, "an attach allocated the free areas again")

        // Values in blocks until the block space grows into a free area.
        var stored = 0
        while try pool.storeUsage().freeAreaBytes == grown.freeAreaBytes && stored < 2_000 {
            try pool.transaction { tx in try tx.set("big\(stored)", [UInt8](repeating: UInt8(truncatingIfNeeded: stored), count: 4_000)) }
            stored += 1
        }
        let reused = try pool.storeUsage()
        #expect(reused.freeAreaBytes < grown.freeAreaBytes && reused.fileBytes == grown.fileBytes, "a free area was reused: \(reused)")
        #expect(allocated() >= reused.fileBytes - reused.freeAreaBytes, "the reused area is allocated whole: \(allocated()) of \(reused)")
        #expect(try pool.check().problems.isEmpty)
        #expect(try pool.value(for: "big\(stored - 1)") == [UInt8](repeating: UInt8(truncatingIfNeeded: stored - 1), count: 4_000))
    }

    /// A damaged growth directory, or a grown file cut short, is refused when opened (exit 65),
    /// never read through.
    @Test func aDamagedDirectoryOrATruncatedGrownFileIsRefused() throws {
        let scratch = Scratch()
        let path = scratch.file("d.pool")
        let directory: Int
        do {
            let pool = try Pool.open(path: path, options: Self.smallOptions())
            try pool.transaction { tx in for i in 0..<40 { try tx.set("k\(i)", String(repeating: "v", count: 200)) } }
            #expect(try pool.storeUsage().growths >= 1)
            directory = pool.memory.layout.heap.lowerBound + Int(PMLL_GROWTH_OFFSET)
        }
        let good = try #require(FileManager.default.contents(atPath: path))
        var bad = good
        bad[directory + 32 + 8] ^= 0x10   // the first area's size
        try bad.write(to: URL(fileURLWithPath: path))
        #expect(throws: PMLLError.corruptPool(path: path, reason: "state store growth directory: checksum mismatch")) { try Pool.open(path: path) }
        let r = try run(Binaries.pmll, ["status", "--pool", path])
        #expect(r.status == 65 && r.stderr.hasPrefix("pmll: ") && r.stderr.contains("growth directory"), "\(r)")

        try good.write(to: URL(fileURLWithPath: path))
        #expect(truncate(path, off_t(4 << 20) + 4096) == 0)
        #expect(throws: PMLLError.self) { try Pool.open(path: path) }
        let cut = try run(Binaries.pmll, ["check", "--pool", path])
        #expect(cut.status == 65 && cut.stderr.contains("truncated"), "\(cut)")
    }
}

/// Values of up to 64 MiB and transactions of 100,000 keys (issue 19), with the same crash
/// guarantees as small ones.
@Suite("Big values and big transactions")
struct BigValueTests {
    @Test func aValueOf64MiBIsStoredReadInPlaceAndReplaced() throws {
        let scratch = Scratch()
        let path = scratch.file("b.pool")
        let pool = try Pool.open(path: path)
        let limit = 64 << 20
        let big = FillPattern.value(prefix: "big", index: 0, maximum: limit + 9)   // exactly... at most the limit
        let exact = big.count == limit ? big : big + [UInt8](repeating: 1, count: limit - big.count)
        try pool.transaction { tx in try tx.set("big", exact) }
        #expect(try pool.value(for: "big") == exact)
        let same = try pool.withValue(for: "big") { bytes in bytes.map { $0.elementsEqual(exact) } }
        #expect(same == true)
        #expect(try pool.withValue(for: "absent") { $0 == nil })
        #expect(throws: PMLLError.valueTooLarge(key: "bigger", bytes: limit + 1, limit: limit)) {
            try pool.transaction { tx in try tx.set("bigger", exact + [0]) }
        }
        let out = scratch.file("big.out")
        let got = try run("/bin/sh", ["-c", "\"$0\" state get --pool \"$1\" big > \"$2\"", Binaries.pmll, path, out], timeout: 120)
        #expect(got.status == 0, "\(got.stderr)")
        #expect(FileManager.default.contents(atPath: out) == Data(exact))
        // Replaced: the old value's blocks come back, the new one is read whole.
        let used = try pool.storeUsage().blocksUsed
        let other = Array(exact.reversed())
        try pool.transaction { tx in try tx.set("big", other) }
        #expect(try pool.value(for: "big") == other)
        #expect(try pool.storeUsage().blocksUsed == used)
        #expect(try pool.check().ok)
        try pool.transaction { tx in try tx.delete("big") }
        #expect(try pool.storeUsage().blocksUsed < used / 100)
        #expect(try pool.check().ok)
    }

    @Test func aTransactionOf100000KeysCommitsAndDeletesAtomically() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("t.pool"))
        let n = 100_000
        try pool.transaction(isolation: .none) { tx in
            for i in 0..<n { try tx.set("pkg/\(i)", "installed \(i)") }
        }
        #expect(try pool.value(for: "pkg/0") == Array("installed 0".utf8))
        #expect(try pool.value(for: "pkg/99999") == Array("installed 99999".utf8))
        #expect(try pool.transaction { tx in try tx.keys(prefix: "pkg/").count } == n)
        #expect(try pool.check().ok)
        try pool.transaction(isolation: .none) { tx in
            for i in 0..<n { try tx.delete("pkg/\(i)") }
        }
        #expect(try pool.transaction { tx in try tx.keys(prefix: "pkg/").count } == 0)
        #expect(try pool.check().ok)
    }

    /// A process killed inside the commit of 100,000 keys (its undo log runs into an overflow
    /// area) or of values of many MiB: before the commit point nothing is left, after it all.
    @Test(arguments: [("tx.undo-logged", false), ("tx.applied", false), ("tx.committed", true)])
    func aKillInsideABigCommitIsAllOrNothing(point: String, committed: Bool) throws {
        let scratch = Scratch()
        let path = scratch.file("k.pool")
        for (prefix, keys, maximum) in [("many", 100_000, 40), ("huge", 3, 30 << 20)] {
            let victim = try Child.worker("fill", "--pool", path, "--prefix", prefix, "--keys", "\(keys)", "--batch", "\(keys)",
                                          "--max-value", "\(maximum)", environment: ["PMLL_CRASH_AT": point])
            #expect(victim.wait(timeout: 240) == 128 + SIGKILL)
            let pool = try Pool.open(path: path)
            #expect(try pool.check().ok)
            var present = 0, wrong = 0
            for i in 0..<keys {
                guard let value = try pool.value(for: "\(prefix)/\(i)") else { continue }
                present += 1
                if value != FillPattern.value(prefix: prefix, index: i, maximum: maximum) { wrong += 1 }
            }
            #expect(present == (committed ? keys : 0) && wrong == 0, "\(prefix) at \(point): \(present) of \(keys) present, \(wrong) wrong")
        }
    }
}
