import CPMLL
import Foundation
@testable import PMLL
import PMLLCore
@testable import PMLLStore
import Testing

/// Commits through the redo log on a disk (Docs/Transactions.md "The redo log"): one shared
/// barrier per commit, a commit killed once its record is complete is finished by the next
/// exclusive holder, one whose record is not is not, and a commit that returned survives the
/// loss of every write it made in place.
@Suite(.serialized)
struct RedoLogTests {
    static func diskScratch() -> Scratch { Scratch(in: "/var/tmp") }

    static func string(_ pool: Pool, _ key: String) throws -> String? {
        try pool.value(for: key).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Durable barriers of one `tx-set` child's transaction.
    static func barriers(_ pool: String, _ pairs: [String], environment: [String: String] = [:]) throws -> Int? {
        let child = try Child(Binaries.worker, ["tx-set", "--pool", pool] + pairs, environment: environment)
        #expect(child.wait() == 0, "\(child.stderr)")
        return child.events.first { $0["event"] as? String == "committed" }?["barriers"] as? Int
    }

    /// A pool on a disk with keys `a`, `other` and `same` (the first and last in one stripe)
    /// and a redo log (made by an update of `other`).
    static func poolWithRedoLog(_ scratch: Scratch, _ name: String) throws -> (path: String, a: String, other: String, same: String) {
        let path = scratch.file(name)
        let (a, other, same) = ParallelCommitTests.keys()
        #expect(try Child.worker("tx-set", "--pool", path, "\(a)=old", "\(other)=old", "\(same)=old").wait() == 0)
        #expect(try Child.worker("tx-set", "--pool", path, "\(other)=warm").wait() == 0)
        return (path, a, other, same)
    }

    /// Where `key`'s slot lies in the file and its bytes, then a commit (by a child) of
    /// "new" to it through the redo log: what a test needs to put the old bytes back (a write
    /// in place that a power failure lost).
    static func commitNew(_ key: String, in pool: String) throws -> (offset: Int, oldBytes: [UInt8]) {
        let (offset, bytes) = try {
            let p = try Pool.open(path: pool)
            let store = try p.stateStore()
            let slot = try #require(try store.find(Array(key.utf8)).found)
            let s = store.view.slot(slot)
            return (store.offset(of: s), Array(UnsafeRawBufferPointer(start: s, count: store.view.slotWidth)))
        }()
        #expect(try Child.worker("tx-set", "--pool", pool, "\(key)=new").wait() == 0)
        return (offset, bytes)
    }

    /// The redo record at the log's checkpoint (the first one written since the last settle).
    static func firstRecord(_ pool: Pool) throws -> UnsafeMutablePointer<pmll_redo_record_t> {
        let store = try pool.stateStore()
        let h = try #require(try pool.redoHeader(try store.refresh()))
        let ring = UnsafeMutableRawPointer(h) + PoolLayout.page
        return (ring + Int(h.pointee.checkpoint % h.pointee.capacity)).assumingMemoryBound(to: pmll_redo_record_t.self)
    }

    /// A commit that replaces records in their slots makes one barrier (its record's flush),
    /// the first one in a pool making the redo log (inserts never do); an insert three, as before (each child opens the pool alone, and the open settles what
    /// the last one left). Inside one process, the first exclusive holder after commits
    /// through the log settles it: the checkpoint moves to the tail.
    @Test func aCommitThroughTheRedoLogMakesOneBarrier() throws {
        let scratch = Self.diskScratch()
        let pool = scratch.file("b.pool")
        _ = try Self.barriers(pool, ["pkg/a=1", "pkg/b=1"])        // creates the pool: inserts, no redo log yet
        #expect(try Self.barriers(pool, ["pkg/a=2", "pkg/b=2"]) ?? 0 > 3)   // the first update makes the redo log
        #expect(try Self.barriers(pool, ["pkg/a=2", "pkg/b=2"]) == 1)
        #expect(try Self.barriers(pool, ["pkg/c=1"]) == 3)
        #expect(try Self.barriers(pool, ["pkg/a=3"]) == 1)
        // After a key list the commit is exclusive, and with a redo log its commit point is
        // durable before it returns: three barriers, not the two of a lazy commit point.
        #expect(try Self.barriers(pool, ["--list", "pkg/", "pkg/b=3"]) == 3)

        let p = try Pool.open(path: pool)
        let store = try p.stateStore()
        let h = try #require(try p.redoHeader(try store.refresh()))
        #expect(pmll_load64(&h.pointee.tail) == h.pointee.checkpoint, "opened alone: settled")
        try p.transaction { tx in try tx.set("pkg/a", "4") }
        #expect(pmll_load64(&h.pointee.tail) > h.pointee.checkpoint, "the record is above the checkpoint")
        try p.transaction { tx in try tx.set("pkg/d", "1") }
        #expect(pmll_load64(&h.pointee.tail) == h.pointee.checkpoint, "an insert settles first")
        #expect(try Self.string(p, "pkg/a") == "4" && Self.string(p, "pkg/b") == "3" && Self.string(p, "pkg/c") == "1")
        #expect(try p.check().problems.isEmpty)
    }

    /// A commit killed at any point after its record was complete is finished, exactly once,
    /// by the first commit to meet its stripe in a process that had the pool open before (so
    /// no open-time check ran): kept, counted as a commit, not as a rollback.
    @Test(arguments: ["tx.redo-logged", "tx.redo-durable", "tx.applying", "tx.applied"])
    func aCommitKilledOnceItsRecordIsCompleteIsFinished(point: String) throws {
        let scratch = Self.diskScratch()
        let (pool, a, other, same) = try Self.poolWithRedoLog(scratch, "k.pool")
        let p = try Pool.open(path: pool)
        let commitsBefore = try p.transactionStatistics().commits
        let victim = try Child.worker("tx-set", "--pool", pool, "\(a)=new", "\(same)=new", environment: ["PMLL_CRASH_AT": point])
        #expect(victim.wait() == 128 + SIGKILL)
        if point == "tx.applying" {
            // Killed between its slots: one holds the new record, the other the old one.
            let store = try p.stateStore()
            #expect(try store.currentVersion(a) != store.currentVersion(same))
        }

        try p.transaction { tx in try tx.set(same, "after") }
        #expect(try p.transactionStatistics().rollbacks == 0)
        #expect(try p.transactionStatistics().commits == commitsBefore + 2)
        #expect(try Self.string(p, a) == "new")
        #expect(try Self.string(p, same) == "after")
        try p.transaction { tx in
            try tx.set(same, "again")
            try tx.set(other, "later")
        }
        #expect(try Self.string(p, same) == "again")
        #expect(try Self.string(p, a) == "new")
        #expect(try p.check().problems.isEmpty)
    }

    /// A record that is not intact (its writer died while writing it, or a power failure kept
    /// only part of it) is never redone: the transaction did not happen, and nothing it would
    /// have written appears.
    @Test func aRecordThatIsNotIntactIsNotRedone() throws {
        let scratch = Self.diskScratch()
        let (pool, a, other, same) = try Self.poolWithRedoLog(scratch, "t.pool")
        let p = try Pool.open(path: pool)
        try p.transaction { tx in try tx.set(other, "settled") }
        _ = try p.committedKeys(prefix: "")   // an exclusive holder: settles, so the next record is at the checkpoint
        let victim = try Child.worker("tx-set", "--pool", pool, "\(a)=new", "\(same)=new", environment: ["PMLL_CRASH_AT": "tx.redo-logged"])
        #expect(victim.wait() == 128 + SIGKILL)
        let record = try Self.firstRecord(p)
        #expect(record.pointee.magic == PMLL_REDO_RECORD_MAGIC && record.pointee.count == 2)
        let byte = UnsafeMutableRawPointer(record) + Int(record.pointee.bytes) - 300
        byte.storeBytes(of: ~byte.load(as: UInt8.self), as: UInt8.self)

        try p.transaction { tx in try tx.set(same, "after") }
        #expect(try Self.string(p, a) == "old")
        #expect(try Self.string(p, same) == "after")
        #expect(try p.check().problems.isEmpty)
    }

    /// A commit that returned survives the loss of every write it made in place (a power
    /// failure before the kernel wrote those pages back): the first process to open the pool
    /// after the reboot settles the log whole from its checkpoint and redoes the record. The
    /// reboot is simulated by a new boot id; the lost writes by putting the slots' old bytes
    /// back in the file while no process has it open.
    @Test func aCommitThatReturnedSurvivesTheLossOfItsWritesInPlace() throws {
        let scratch = Self.diskScratch()
        let (pool, a, _, _) = try Self.poolWithRedoLog(scratch, "l.pool")
        let (offset, oldBytes) = try Self.commitNew(a, in: pool)
        let fd = open(pool, O_RDWR)
        #expect(oldBytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) } == oldBytes.count)
        close(fd)
        let bootFile = scratch.file("boot_id")
        try UUID().uuidString.lowercased().write(toFile: bootFile, atomically: true, encoding: .utf8)
        let reader = try Child.worker("tx-set", "--pool", pool, a, environment: ["PMLL_BOOT_ID_FILE": bootFile])
        #expect(reader.wait() == 0, "\(reader.stderr)")
        let p = try Pool.open(path: pool)
        #expect(try Self.string(p, a) == "new")
        #expect(try p.check().problems.isEmpty)
    }

    /// A read-only participant cannot settle the log, but after a restart that left a commit
    /// that returned only in its record (its write in place lost) it reads that commit: it
    /// lays the record's bytes over its own copy-on-write copy of the slot's page, and the
    /// file keeps every byte. Once a read-write process has opened the pool (settled it, and
    /// committed again), the reader reads what that process wrote, not its copy. The restart
    /// is simulated by another boot id in the pool's header (so that this process's own, and
    /// the machine's, differ from it); the lost write as above.
    @Test func aReadOnlyReaderAfterARestartReadsCommitsStillOnlyInTheRedoLog() throws {
        let scratch = Self.diskScratch()
        chmod(scratch.path, 0o755)
        let (pool, a, other, _) = try Self.poolWithRedoLog(scratch, "r.pool")
        let (offset, oldBytes) = try Self.commitNew(a, in: pool)
        var options = PoolOptions()
        options.readOnly = true
        Self.restart(pool, losing: (offset, oldBytes))
        let before = try Data(contentsOf: URL(fileURLWithPath: pool))
        let reader = try Pool.open(path: pool, options: options)
        #expect(try Self.string(reader, a) == "new")
        #expect(try Self.string(reader, other) == "warm")
        #expect(try reader.check().problems.isEmpty)
        if AccessControlTests.asRoot {
            // A user who may only read the file, at the command line.
            #expect(chown(pool, 0, 65534) == 0 && chmod(pool, 0o640) == 0)
            var r = try AccessControlTests().asNobody(["state", "get", "--pool", pool, a])
            #expect(r.status == 0 && r.stdout == "new", "\(r)")
            r = try AccessControlTests().asNobody(["check", "--pool", pool])
            #expect(r.status == 0 && r.stdout.hasSuffix("ok"), "\(r)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: pool)) == before, "the pool file changed")

        #expect(try Child.worker("tx-set", "--pool", pool, "\(a)=newer").wait() == 0)
        #expect(try Self.string(reader, a) == "newer")
        #expect(try Self.string(reader, other) == "warm")
        #expect(try reader.check().problems.isEmpty)
        // Another restart: the last commit's record lies above the checkpoint, its bytes in
        // place already (nothing lost this time), and the reader reads them.
        Self.restart(pool)
        #expect(try Self.string(try Pool.open(path: pool, options: options), a) == "newer")
    }

    /// A restart, as a read-only participant sees one: another boot id in the pool's header
    /// (this process's own, and the machine's, differ from it), and, if `losing`, a write in
    /// place the power failure lost (the slot's bytes before it put back).
    static func restart(_ pool: String, losing: (offset: Int, bytes: [UInt8])? = nil) {
        let fd = open(pool, O_RDWR)
        defer { close(fd) }
        if let (offset, bytes) = losing {
            #expect(bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) } == bytes.count)
        }
        var id = Array("00000000-0000-4000-8000-\(String(UInt64.random(in: 0..<(1 << 48)), radix: 16))".utf8) + [0]
        let field = MemoryLayout<pmll_header_t>.offset(of: \pmll_header_t.boot_id)!
        #expect(pwrite(fd, &id, id.count, off_t(field)) == id.count)
    }

    /// A commit through the log killed between its two slots (its record complete, its
    /// marker pending), then a restart: a read-only reader finishes it in its own view (both
    /// slots new, no transaction pending) instead of waiting for a writer to roll it forward.
    @Test func aReadOnlyReaderAfterARestartFinishesACommitKilledOnceItsRecordWasComplete() throws {
        let scratch = Self.diskScratch()
        let (pool, a, other, same) = try Self.poolWithRedoLog(scratch, "m.pool")
        let victim = try Child.worker("tx-set", "--pool", pool, "\(a)=new", "\(same)=new", environment: ["PMLL_CRASH_AT": "tx.applying"])
        #expect(victim.wait() == 128 + SIGKILL)
        Self.restart(pool)
        var options = PoolOptions()
        options.readOnly = true
        let reader = try Pool.open(path: pool, options: options)
        #expect(try Self.string(reader, a) == "new")
        #expect(try Self.string(reader, same) == "new")
        #expect(try Self.string(reader, other) == "warm")
        #expect(try reader.check().problems.isEmpty)
    }

    /// A redo log whose header is damaged is a corrupt pool, never a log read as it happens to
    /// be: one line and exit 65 at the command line, for reads as for checks.
    @Test func aDamagedHeaderIsACorruptPool() throws {
        let scratch = Self.diskScratch()
        let pool = scratch.file("h.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "a=1"]).status == 0)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "a=2"]).status == 0)   // makes the redo log
        let offset: Int = try {
            let p = try Pool.open(path: pool)
            let area = try #require(try p.stateStore().refresh().redoArea)
            return Int(area.offset) + MemoryLayout<pmll_redo_header_t>.offset(of: \pmll_redo_header_t.capacity)!
        }()
        var capacity: UInt64 = 12_345
        let fd = open(pool, O_RDWR)
        #expect(pwrite(fd, &capacity, 8, off_t(offset)) == 8)
        close(fd)
        for arguments in [["state", "get", "--pool", pool, "a"], ["check", "--pool", pool]] {
            let r = try run(Binaries.pmll, arguments)
            #expect(r.status == 65 && r.stderr == "pmll: pool '\(pool)' is corrupt: the redo log's header is damaged\n", "\(r)")
        }
    }

    /// Counters from several processes of two threads each, on a ring of 64 KiB that fills
    /// every few hundred commits: the log wraps, commits that find it half used settle it and
    /// those that find it full commit exclusively, and no update is lost.
    @Test(arguments: ["yield", "sleep"])
    func countersLoseNoUpdateWhileTheLogWraps(gather: String) throws {
        let scratch = Self.diskScratch()
        let pool = scratch.file("w.pool")
        let environment = ["PMLL_REDO_LOG": "65536", "PMLL_REDO_GATHER": gather]
        #expect(try Child.worker("tx-set", "--pool", pool, "shared=0", "own0=0", "own1=0", environment: environment).wait() == 0)
        let keys = ["shared", "shared", "own0", "own1"]
        let workers = try keys.map { key in
            try Child.worker("tx-counter", "--pool", pool, "--threads", "2", "--count", "400", "--key", key, environment: environment)
        }
        var committed: [String: Int] = [:]
        for (w, key) in zip(workers, keys) {
            let done = try #require(w.waitForEvent("done", timeout: 300), "\(w.stderr)")
            #expect(done["errors"] as? Int == 0)
            committed[key, default: 0] += done["committed"] as? Int ?? 0
            #expect(w.wait() == 0)
        }
        let p = try Pool.open(path: pool)
        let store = try p.stateStore()
        let h = try #require(try p.redoHeader(try store.refresh()))
        #expect(h.pointee.capacity == 65536)
        #expect(h.pointee.checkpoint > 2 * h.pointee.capacity, "the log wrapped at least twice")
        for (key, n) in committed { #expect(try Self.string(p, key) == String(n), "\(key)") }
        #expect(try p.check().problems.isEmpty)
    }

    /// The flusher's hints (the last flush's group and duration) are only hints: a writer alone
    /// under hints saying that 64 writers come and that a flush takes two minutes waits at most
    /// ``Pool/redoGatherNanoseconds`` (without that cap its commit would take the two minutes;
    /// the bound checked, 60 s, only tells that from a hang), and its flush leaves the true
    /// hints: a group of one, a duration it measured.
    @Test func staleFlushHintsNeverStallALoneWriter() throws {
        let scratch = Self.diskScratch()
        let (pool, a, _, _) = try Self.poolWithRedoLog(scratch, "g.pool")
        let p = try Pool.open(path: pool)
        let store = try p.stateStore()
        let h = try #require(try p.redoHeader(try store.refresh()))
        pmll_store32(&h.pointee.group, 64)
        pmll_store64(&h.pointee.flush_nanoseconds, 120_000_000_000)
        let requested = pmll_load64(&h.pointee.flush_requested)
        let start = Clock.monotonicNanoseconds
        try p.transaction { tx in try tx.set(a, "hinted") }
        #expect(Clock.monotonicNanoseconds - start < 60_000_000_000)
        #expect(pmll_load64(&h.pointee.flush_requested) == requested + 1, "the commit went through the redo log")
        #expect(pmll_load32(&h.pointee.group) == 1)
        let took = pmll_load64(&h.pointee.flush_nanoseconds)
        #expect(took > 0 && took < 60_000_000_000, "\(took) ns")
        #expect(try Self.string(p, a) == "hinted")
    }

    /// The flush statistics count each flush and the commits it covered: a writer alone makes
    /// one flush per commit, covering it alone, with no wait for a group beyond the bound
    /// (``Pool/redoGatherNanoseconds``). `pmll status` and `pmll metrics` in another process
    /// show the same counts (they outlive the processes that made them).
    @Test func flushStatisticsCountEachFlushAndTheCommitsItCovered() throws {
        let scratch = Self.diskScratch()
        let (pool, a, _, _) = try Self.poolWithRedoLog(scratch, "s.pool")
        let (flushes, commits): (UInt64, UInt64) = try {
            let p = try Pool.open(path: pool)
            let before = try p.storeUsage()
            #expect(before.redoLogBytes > 0 && before.redoFlushes >= 1, "the update that made the log flushed it: \(before)")
            #expect(before.redoFlushedCommits == before.redoFlushes, "every commit so far came alone")
            for n in 0..<3 { try p.transaction { tx in try tx.set(a, "v\(n)") } }
            let after = try p.storeUsage()
            #expect(after.redoFlushes == before.redoFlushes + 3)
            #expect(after.redoFlushedCommits == before.redoFlushedCommits + 3)
            #expect(after.redoFlushNanoseconds > before.redoFlushNanoseconds)
            #expect(after.redoGroupWaitNanoseconds - before.redoGroupWaitNanoseconds <= 3 * UInt64(Pool.redoGatherNanoseconds) + 3_000_000,
                    "a writer alone never waits for a group longer than the bound")
            return (after.redoFlushes, after.redoFlushedCommits)
        }()
        let status = try run(Binaries.pmll, ["status", "--pool", pool])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains(", \(flushes) flushes covering 1.00 commits each ("), "\(status.stdout)")
        let metrics = try run(Binaries.pmll, ["metrics", "--pool", pool])
        #expect(metrics.status == 0, "\(metrics.stderr)")
        let e = try MetricsTests.parse(metrics.stdout)
        #expect(e.value("pmll_store_redo_flushes_total", ["pool": pool]) == Double(flushes))
        #expect(e.value("pmll_store_redo_flushed_commits_total", ["pool": pool]) == Double(commits))
        #expect(e.value("pmll_store_redo_flush_seconds_total", ["pool": pool]) ?? 0 > 0)
    }

    /// A flusher asleep while it waits for its group (``Pool/sleepGatheringNanoseconds``) is
    /// woken by the writer whose number completes the group, and only then: a writer that
    /// finds nobody gathering makes no wake-up (no system call on every commit).
    @Test func theWriterThatCompletesTheGroupWakesASleepingFlusher() throws {
        let scratch = Self.diskScratch()
        let (pool, a, _, _) = try Self.poolWithRedoLog(scratch, "k.pool")
        let p = try Pool.open(path: pool)
        let h = try #require(try p.redoHeader(try p.stateStore().refresh()))
        let word = pmll_load32(&h.pointee.gather_word)
        try p.transaction { tx in try tx.set(a, "nobody gathers") }
        #expect(pmll_load32(&h.pointee.gather_word) == word, "no flusher was asleep: no wake-up")
        // A flusher of another process asleep for a group of one more writer.
        pmll_store32(&h.pointee.group, 1)
        var expected: UInt32 = 0
        #expect(pmll_wakeword_announce_sleeper(&h.pointee.gather_word, word, &expected) != 0)
        try p.transaction { tx in try tx.set(a, "completes the group") }
        #expect(pmll_load32(&h.pointee.gather_word) == word &+ 1, "the writer completing the group woke it (and cleared the sleeper bit)")
        #expect(try Self.string(p, a) == "completes the group")
    }
}
