import Foundation
import PMLL
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
        var stored = 0
        var failure: PMLLError?
        while failure == nil && stored < 200 {
            do {
                try pool.transaction { tx in try tx.set("v\(stored)", value) }
                stored += 1
            } catch let error as PMLLError {
                failure = error
            }
        }
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
}
