import CPMLL
import Foundation
@testable import PMLL
import PMLLCore
import Testing

/// Commits on different keys run at once (Docs/Transactions.md "Parallel commits"): a
/// process stopped inside its commit holds up only the keys it writes, and one that dies
/// there leaves nothing half-done for the others.
@Suite(.serialized)
struct ParallelCommitTests {
    /// Two keys whose slots fall in different stripes (slot = CRC32C % capacity in a sparse
    /// index; stripe = slot mod 64) and a third in the first one's stripe.
    static func keys(capacity: UInt32 = 4096) -> (a: String, other: String, sameStripe: String) {
        func stripe(_ key: String) -> UInt32 {
            let bytes = Array(key.utf8)
            return bytes.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) } % capacity % 64
        }
        let a = "pkg/a"
        let other = (0..<1000).map { "pkg/other\($0)" }.first { stripe($0) != stripe(a) }!
        let same = (0..<100_000).map { "pkg/same\($0)" }.first { stripe($0) == stripe(a) }!
        return (a, other, same)
    }

    static func string(_ pool: Pool, _ key: String) throws -> String? {
        try pool.value(for: key).map { String(decoding: $0, as: UTF8.self) }
    }

    /// A commit stopped between its undo log and its commit point holds its stripe and the
    /// store lock shared: a commit of a key in another stripe goes through meanwhile, one in
    /// the same stripe waits for it. Under one exclusive store lock both would wait.
    @Test func aStoppedCommitHoldsUpOnlyItsStripe() throws {
        let scratch = Scratch()
        let pool = scratch.file("p.pool")
        let (a, other, same) = Self.keys()
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=old", "\(other)=old", "\(same)=old").wait() == 0)
        let stopped = try Child.worker("tx-set", "--pool", pool, "\(a)=new", environment: ["PMLL_PAUSE_AT": "tx.applying"])
        defer { stopped.killTree() }
        try stopped.waitUntilStopped()

        let disjoint = try Child.worker("tx-set", "--pool", pool, "\(other)=mine")
        let finished = disjoint.waitForEvent("committed", timeout: 30)
        #expect(finished != nil, "a commit of a key in another stripe waited for the stopped one: \(disjoint.stderr)")
        #expect(disjoint.wait() == 0)

        let blocked = try Child.worker("tx-set", "--pool", pool, "\(same)=theirs")
        usleep(500_000)
        #expect(blocked.events.isEmpty, "a commit in the stopped commit's stripe did not wait for it")
        kill(stopped.pid, SIGCONT)
        #expect(stopped.wait() == 0)
        #expect(blocked.wait() == 0)

        let p = try Pool.open(path: pool)
        #expect(try Self.string(p, a) == "new")
        #expect(try Self.string(p, other) == "mine")
        #expect(try Self.string(p, same) == "theirs")
        #expect(try p.check().problems.isEmpty)
    }

    /// A commit killed inside: the first commit to meet the dead one's stripe (in a process
    /// that had the pool open before, so no open-time check ran) is told the stripe's holder
    /// died, rolls the dead transaction back under the exclusive store lock, and commits; the
    /// stripe is clean afterwards.
    @Test(arguments: ["tx.undo-logged", "tx.applying", "tx.applied"])
    func aCommitKilledInsideIsRolledBackBeforeItsStripeIsUsed(point: String) throws {
        let scratch = Scratch()
        let pool = scratch.file("k.pool")
        let (a, other, same) = Self.keys()
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=old", "\(other)=old", "\(same)=old").wait() == 0)
        let p = try Pool.open(path: pool)
        let victim = try Child.worker("tx-set", "--pool", pool, "\(a)=new", "\(same)=new", environment: ["PMLL_CRASH_AT": point])
        #expect(victim.wait() == 128 + SIGKILL)

        try p.transaction { tx in try tx.set(same, "after") }
        #expect(try p.transactionStatistics().rollbacks == 1)
        #expect(try Self.string(p, a) == "old")
        #expect(try Self.string(p, same) == "after")
        try p.transaction { tx in
            try tx.set(same, "again")
            try tx.set(other, "later")
        }
        #expect(try p.transactionStatistics().rollbacks == 1)
        #expect(try Self.string(p, same) == "again")
        #expect(try Self.string(p, other) == "later")
        #expect(try p.check().problems.isEmpty)
    }

    /// The store lock's reader bias (Docs/Transactions.md "Reader bias"): once a parallel
    /// commit turned it on, commits hold the lock shared through their process's ledger only
    /// (the reader count stays 0). An insert, which takes the lock exclusively, waits for one
    /// stopped inside its commit; one killed there is found dead in the ledgers, and the next
    /// insert rolls it back instead of waiting forever.
    @Test func anInsertWaitsForABiasedCommitAndNotForADeadOne() throws {
        let scratch = Scratch()
        let pool = scratch.file("b.pool")
        let (a, other, same) = Self.keys()
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=old", "\(other)=old", "\(same)=old").wait() == 0)
        let p = try Pool.open(path: pool)
        let entry = p.memory.lock(try p.storeLock())
        func readers() -> (count: UInt64, biased: Bool) {
            let v = pmll_load64(pmll_entry_readers(entry))
            return (v & PMLL_READERS_COUNT, v & PMLL_READERS_BIASED != 0)
        }
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=warm").wait() == 0)
        #expect(readers().biased, "a parallel commit turns the bias on")

        let stopped = try Child.worker("tx-set", "--pool", pool, "\(a)=new", environment: ["PMLL_PAUSE_AT": "tx.applying"])
        defer { stopped.stopIfRunning() }
        try stopped.waitUntilStopped()
        #expect(readers().count == 0 && readers().biased, "the stopped commit holds the lock biased")
        let inserter = try Child.worker("tx-set", "--pool", pool, "new=1")
        usleep(500_000)
        #expect(inserter.events.isEmpty, "an insert went in beside a commit that holds the store lock biased")
        stopped.kill(SIGCONT)
        #expect(stopped.wait() == 0)
        #expect(inserter.wait() == 0)
        #expect(try Self.string(p, a) == "new")
        #expect(try Self.string(p, "new") == "1")

        usleep(2_000)   // past the revocation's inhibition (at least 100 µs)
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=warm2").wait() == 0)
        // A counted holder turns the bias back on (after an inhibition, every 16th looks).
        for _ in 0..<32 where !readers().biased {
            p.releaseShared(try p.acquireShared(index: try p.storeLock(), deadline: .max, cancellation: nil))
        }
        let victim = try Child.worker("tx-set", "--pool", pool, "\(a)=dead", environment: ["PMLL_CRASH_AT": "tx.applying"])
        #expect(victim.wait() == 128 + SIGKILL)
        #expect(readers().count == 0 && readers().biased, "the dead commit held the lock biased")
        let next = try Child.worker("tx-set", "--pool", pool, "newer=1")
        #expect(next.wait(timeout: 30) == 0)
        #expect(try Self.string(p, a) == "warm2")
        #expect(try Self.string(p, "newer") == "1")
        #expect(try p.check().problems.isEmpty)
    }

    /// Counters from several processes of several threads each, on keys of their own and on
    /// one they share: serializable read-modify-write loses no update, whichever way each
    /// commit went (in parallel, or exclusively when a second thread of the same process was
    /// committing).
    @Test func countersFromManyProcessesLoseNoUpdate() throws {
        let scratch = Scratch()
        let pool = scratch.file("c.pool")
        do {
            let p = try Pool.open(path: pool)
            try p.transaction { tx in for k in ["shared", "own0", "own1", "own2"] { try tx.set(k, "0") } }
        }
        let workers = try [("shared", 0), ("shared", 1), ("own0", 2), ("own1", 3), ("own2", 4)].map { key, _ in
            try Child.worker("tx-counter", "--pool", pool, "--threads", "2", "--count", "300", "--key", key)
        }
        var committed: [String: Int] = [:]
        for (w, key) in zip(workers, ["shared", "shared", "own0", "own1", "own2"]) {
            let done = try #require(w.waitForEvent("done", timeout: 120), "\(w.stderr)")
            #expect(done["errors"] as? Int == 0)
            committed[key, default: 0] += done["committed"] as? Int ?? 0
            #expect(w.wait() == 0)
        }
        let p = try Pool.open(path: pool)
        for (key, n) in committed { #expect(try Self.string(p, key) == String(n), "\(key)") }
        #expect(try p.check().problems.isEmpty)
    }
}
