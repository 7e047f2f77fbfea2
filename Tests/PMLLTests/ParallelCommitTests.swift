import CPMLL
import Foundation
@testable import PMLL
import PMLLCore
@testable import PMLLStore
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

    /// The undo-log path of parallel commits: a pool on tmpfs (this process makes no barrier
    /// there) and children that make no redo log though their crash points arm barriers.
    /// On a disk, commits go through the redo log (RedoLogTests).
    static let undoLogPath = ["PMLL_REDO_LOG": "off"]
    static func tmpfsScratch() -> Scratch { Scratch(in: "/dev/shm") }

    static func string(_ pool: Pool, _ key: String) throws -> String? {
        try pool.value(for: key).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The entries of the one pending undo log (a dead committer's), in place.
    static func pendingLogEntries(_ pool: Pool) throws -> UnsafeMutableRawPointer {
        let store = try pool.stateStore()
        let log = try #require((0..<store.layout.logSlots).first { pool.isPending(store.logHeader($0)) })
        return UnsafeMutableRawPointer(store.logHeader(log)) + MemoryLayout<pmll_log_header_t>.size
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
    /// died, resolves the dead transaction under the exclusive store lock, and commits; the
    /// stripe is clean afterwards. Killed before its records were written, the transaction is
    /// rolled back; killed once they all were (before its commit point), it is kept
    /// (Docs/Transactions.md "The lazy commit point").
    @Test(arguments: [("tx.undo-logged", false), ("tx.applying", true), ("tx.applied", true)])
    func aCommitKilledInsideIsResolvedBeforeItsStripeIsUsed(point: String, kept: Bool) throws {
        let scratch = Self.tmpfsScratch()
        let pool = scratch.file("k.pool")
        let (a, other, same) = Self.keys()
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=old", "\(other)=old", "\(same)=old").wait() == 0)
        let p = try Pool.open(path: pool)
        let commitsBefore = try p.transactionStatistics().commits
        let victim = try Child.worker("tx-set", "--pool", pool, "\(a)=new", "\(same)=new", environment: Self.undoLogPath.merging(["PMLL_CRASH_AT": point]) { $1 })
        #expect(victim.wait() == 128 + SIGKILL)

        try p.transaction { tx in try tx.set(same, "after") }
        let rollbacks: UInt64 = kept ? 0 : 1
        #expect(try p.transactionStatistics().rollbacks == rollbacks)
        #expect(try p.transactionStatistics().commits == commitsBefore + (kept ? 2 : 1))
        #expect(try Self.string(p, a) == (kept ? "new" : "old"))
        #expect(try Self.string(p, same) == "after")
        try p.transaction { tx in
            try tx.set(same, "again")
            try tx.set(other, "later")
        }
        #expect(try p.transactionStatistics().rollbacks == rollbacks)
        #expect(try Self.string(p, same) == "again")
        #expect(try Self.string(p, other) == "later")
        #expect(try p.check().problems.isEmpty)
    }

    /// A parallel commit whose records did not all reach their slots is rolled back, however
    /// far it got: one slot still holding its old record (a write the disk never got), one
    /// torn (its checksum fails), or one rewritten with an older version.
    @Test(arguments: ["lost", "torn", "older"])
    func aParallelCommitCutShortIsRolledBack(damage: String) throws {
        let scratch = Self.tmpfsScratch()
        let pool = scratch.file("c.pool")
        let (a, other, same) = Self.keys()
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=old", "\(other)=old", "\(same)=old").wait() == 0)
        let p = try Pool.open(path: pool)
        let victim = try Child.worker("tx-set", "--pool", pool, "\(a)=new", "\(same)=new", environment: Self.undoLogPath.merging(["PMLL_CRASH_AT": "tx.applied"]) { $1 })
        #expect(victim.wait() == 128 + SIGKILL)

        // The dead commit's log: its version, then each slot's old bytes.
        let store = try p.stateStore()
        let entries = try Self.pendingLogEntries(p)
        let version = entries.load(as: pmll_log_entry_t.self)
        #expect(version.kind == PMLL_LOG_VERSION)
        let first = entries.load(fromByteOffset: 16, as: pmll_log_entry_t.self)
        #expect(first.kind == PMLL_LOG_BYTES && first.length == store.view.slotWidth)
        let slot = (p.memory.base + Int(first.offset)).assumingMemoryBound(to: pmll_key_slot_t.self)
        #expect(slot.pointee.version == version.offset)
        switch damage {
        case "lost":
            UnsafeMutableRawPointer(slot).copyMemory(from: entries + 32, byteCount: Int(first.length))
        case "torn":
            let record = UnsafeMutableRawPointer(slot) + Int(PMLL_KEY_SLOT_HEAD)
            record.storeBytes(of: ~record.load(fromByteOffset: 5, as: UInt8.self), toByteOffset: 5, as: UInt8.self)
        default:
            slot.pointee.version = version.offset - 1
            let length = Int(slot.pointee.key_length + slot.pointee.value_length)
            slot.pointee.checksum = StateStore.checksum(slot, record: UnsafeRawBufferPointer(start: UnsafeRawPointer(slot) + Int(PMLL_KEY_SLOT_HEAD), count: length))
        }

        try p.transaction { tx in try tx.set(same, "after") }
        #expect(try p.transactionStatistics().rollbacks == 1)
        #expect(try Self.string(p, a) == "old")
        #expect(try Self.string(p, same) == "after")
        #expect(try p.check().problems.isEmpty)
    }

    /// A parallel commit's log must fit its 64 KiB slot: an overflow area is a growth, which
    /// needs the store lock exclusively (two committers growing under the shared lock would
    /// place their areas at the same offset). 240 keys of 256-byte slots are one parallel
    /// commit with no growth; 241 commit exclusively, growing the log.
    @Test func aParallelCommitsLogFitsItsSlot() throws {
        let scratch = Self.tmpfsScratch()
        let pool = scratch.file("w.pool")
        let keys = (0..<241).map { "pkg/k\($0)" }
        for first in stride(from: 0, to: keys.count, by: 60) {
            #expect(try Child(Binaries.worker, ["tx-set", "--pool", pool] + keys[first..<min(first + 60, keys.count)].map { "\($0)=old" }).wait() == 0)
        }
        let p = try Pool.open(path: pool)
        let store = try p.stateStore()
        #expect(Pool.parallelWritesMax(slotWidth: store.view.slotWidth) == 240)
        #expect(Pool.parallelWritesMax(slotWidth: Int(PMLL_KEY_SLOT_NARROW)) == 256)
        /// The first entry's kind of the log a commit of `count` keys left when killed, whether
        /// it held the store lock exclusively, and the growths the store had made by then.
        func killed(_ count: Int) throws -> (kind: UInt32, exclusive: Bool, growths: UInt32) {
            let victim = try Child(Binaries.worker, ["tx-set", "--pool", pool] + keys.prefix(count).map { "\($0)=new" },
                                   environment: Self.undoLogPath.merging(["PMLL_CRASH_AT": "tx.undo-logged"]) { $1 })
            #expect(victim.wait() == 128 + SIGKILL)
            let entries = try Self.pendingLogEntries(p)
            let word = pmll_load32(pmll_entry_word(p.memory.lock(try p.storeLock())))
            let result = (entries.load(as: pmll_log_entry_t.self).kind, word != 0, try store.refresh().growths)
            try p.transaction { tx in try tx.set("pkg/k0", "after") }   // rolls it back first
            return result
        }
        // 241 first: a parallel commit killed leaves stripes that a later committer must
        // repair, and a repair makes that commit exclusive whatever its size.
        let before = try store.refresh().growths
        // Exclusive, and growing its log; still judged by its slots (it only replaces records).
        #expect(try killed(241) == (PMLL_LOG_VERSION, true, before + 1))
        #expect(try killed(240) == (PMLL_LOG_VERSION, false, before + 1))
        #expect(try p.transactionStatistics().rollbacks == 2)
        #expect(try Self.string(p, "pkg/k240") == "old")
        #expect(try p.check().problems.isEmpty)
    }

    /// On a disk without a redo log, a parallel commit makes two barriers (its log, its
    /// records) and an exclusive one three (log, data, commit point); the parallel commit's
    /// point rides on the next barrier over the log headers.
    @Test func aParallelCommitMakesTwoBarriersOnADisk() throws {
        let directory = "/var/tmp/pmll-test-\(getpid())-barriers"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pool = directory + "/b.pool"
        func barriers(_ pairs: String...) throws -> Int? {
            let child = try Child(Binaries.worker, ["tx-set", "--pool", pool] + pairs, environment: Self.undoLogPath)
            #expect(child.wait() == 0)
            return child.events.first { $0["event"] as? String == "committed" }?["barriers"] as? Int
        }
        _ = try barriers("pkg/a=1", "pkg/b=1")              // creates the pool and its store
        #expect(try barriers("pkg/a=2", "pkg/b=2") == 2)   // replaced in their slots: parallel
        #expect(try barriers("pkg/c=1") == 3)              // an insert: exclusive
        #expect(try barriers("pkg/a=3") == 2)
        // After a key list the commit is exclusive; replacing records in their slots, it is
        // judged by its slots too: two barriers. An insert still makes three.
        #expect(try barriers("--list", "pkg/", "pkg/b=3") == 2)
        #expect(try barriers("--list", "pkg/", "pkg/d=1") == 3)
        let p = try Pool.open(path: pool)
        #expect(try Self.string(p, "pkg/a") == "3" && Self.string(p, "pkg/b") == "3" && Self.string(p, "pkg/c") == "1")
        #expect(try p.check().problems.isEmpty)
    }

    /// An exclusive commit (here after a key list) that only replaces records in their slots
    /// logs its version and is judged by its slots like a parallel one: killed once its
    /// records were written it is kept, killed before it is rolled back.
    @Test(arguments: [("tx.applied", true), ("tx.undo-logged", false)])
    func anExclusiveUpdateIsJudgedByItsSlots(point: String, kept: Bool) throws {
        let scratch = Self.tmpfsScratch()
        let pool = scratch.file("x.pool")
        #expect(try Child.worker("tx-set", "--pool", pool, "pkg/a=old", "pkg/b=old").wait() == 0)
        let p = try Pool.open(path: pool)
        let victim = try Child.worker("tx-set", "--pool", pool, "--list", "pkg/", "pkg/a=new", "pkg/b=new", environment: Self.undoLogPath.merging(["PMLL_CRASH_AT": point]) { $1 })
        #expect(victim.wait() == 128 + SIGKILL)
        #expect(try Self.pendingLogEntries(p).load(as: pmll_log_entry_t.self).kind == PMLL_LOG_VERSION)
        #expect(try Self.string(p, "pkg/a") == (kept ? "new" : "old"))   // resolved first (the store lock's holder died)
        #expect(try Self.string(p, "pkg/b") == (kept ? "new" : "old"))
        #expect(try p.transactionStatistics().rollbacks == (kept ? 0 : 1))
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
        // On a disk the first update makes the redo log (an exclusive hold, which turns the
        // bias off for a while); counted holders turn it back on.
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=warm").wait() == 0)
        usleep(2_000)
        for _ in 0..<32 where !readers().biased {
            p.releaseShared(try p.acquireShared(index: try p.storeLock(), deadline: .max, cancellation: nil))
        }
        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=warm").wait() == 0)
        #expect(readers().biased, "a parallel commit keeps the bias on")

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
        // Killed once its record was in its slot: kept, by the insert that resolved it.
        #expect(try Self.string(p, a) == "dead")
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
