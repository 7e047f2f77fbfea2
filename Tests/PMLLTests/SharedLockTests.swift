import CPMLL
import Foundation
import Testing
import PMLL
import PMLLCore
import PMLLLocks

/// Shared holds across real processes (issue 15): many readers at once, writers exclude
/// everyone, dead readers do not block writers, a reader stream does not starve a writer.
@Suite("Shared locks across processes", .serialized)
struct SharedLockTests {
    @Test func readersShareAndAWriterExcludesThem() throws {
        let scratch = Scratch()
        let pool = scratch.file("s.pool")
        let readers = try (0..<3).map { _ in try Child.worker("hold", "--pool", pool, "--lock", "r", "--shared", "--seconds", "1") }
        for reader in readers { _ = try #require(reader.waitForEvent("acquired", timeout: 10)) }
        let status = try #require(try Pool.open(path: pool).status().locks.first { $0.name == "r" })
        #expect(status.state == .shared && status.readers.count == 3 && status.sharedHolds == 3)
        // A writer waits for all three; a reader arriving after it queues behind it.
        let start = Date()
        let writer = try Child.worker("hold", "--pool", pool, "--lock", "r", "--seconds", "0.5")
        try waitForDrain(pool: pool, lock: "r")
        let late = try Child.worker("hold", "--pool", pool, "--lock", "r", "--shared", "--seconds", "0")
        let w = try #require(writer.waitForEvent("acquired", timeout: 10))
        #expect(w["ownerDied"] as? Bool == false)
        #expect(Date().timeIntervalSince(start) > 0.5)
        #expect(late.waitForEvent("acquired", timeout: 0.2) == nil, "a reader got in while the writer held the lock")
        _ = try #require(late.waitForEvent("acquired", timeout: 10))
        for child in readers + [writer, late] { #expect(child.wait() == 0) }
        let after = try #require(try Pool.open(path: pool).status().locks.first { $0.name == "r" })
        #expect(after.shared.acquisitions == 4 && after.shared.readerDeaths == 0 && after.shared.drains == 1)
        #expect(after.sharedHolds == 0 && after.state == .free)
    }

    /// A writer that took the word and found the reader bias off waits for the count only;
    /// a counted holder that got in before it may turn the bias on afterwards, and a biased
    /// reader that had loaded the word before the writer's CAS then goes in uncounted. The
    /// writer must see the bias when the count drains and wait for that reader's ledger entry.
    /// This test is that reader, taking the steps of the biased fast path
    /// (`Pool.acquireSharedFast`) by hand between the other processes' steps. Without the
    /// check in `ReaderDrain` the writer went in beside it.
    @Test func aBiasTurnedOnWhileAWriterDrainsIsSeenByIt() throws {
        let scratch = Scratch()
        let path = scratch.file("e.pool")
        // A first counted holder stops where it turns the bias on (a fresh lock: not inhibited).
        let counted = try Child.worker("hold", "--pool", path, "--lock", "e", "--shared", "--seconds", "1",
                                       environment: ["PMLL_PAUSE_AT": "lock.bias-enabling"])
        defer { counted.stopIfRunning() }
        try counted.waitUntilStopped()
        let pool = try Pool.open(path: path)
        let index = try #require(try pool.table.lookup("e")).index
        let entry = pool.memory.lock(index)
        let slot = pool.memory.slot(pool.slot)
        // The biased reader: its ledger entry, then the word, free.
        let ledger = try #require(ReaderLedger.enter(slot, lock: index))
        #expect(pmll_load32(pmll_entry_word(entry)) & PMLL_OWNER_MASK == 0)
        // A writer takes the word, finds one counted holder and the bias off, and drains.
        let writer = try Child.worker("hold", "--pool", path, "--lock", "e", "--seconds", "0", "--timeout", "60")
        defer { writer.stopIfRunning() }
        let end = Date().addingTimeInterval(20)
        while pmll_load32(pmll_entry_word(entry)) & PMLL_WORD_DRAINING == 0 && Date() < end { usleep(2_000) }
        try #require(pmll_load32(pmll_entry_word(entry)) & PMLL_WORD_DRAINING != 0, "the writer never drained")
        // The counted holder goes on: the bias on, a second's hold, out.
        counted.kill(SIGCONT)
        #expect(counted.wait(timeout: 20) == 0)
        // The biased reader's second load: the bias on, so it is in, in its ledger only.
        try #require(pmll_load64(pmll_entry_readers(entry)) & PMLL_READERS_BIASED != 0)
        #expect(writer.waitForEvent("acquired", timeout: 2) == nil, "the writer went in beside a biased reader")
        SharedHolds.leaveBiased(entry, slot: slot, ledger: ledger, owned: false)
        #expect(writer.waitForEvent("acquired", timeout: 20) != nil)
        #expect(writer.wait() == 0)
    }

    /// SIGKILL a reader while a writer waits for it: the writer gets the lock, is not told of
    /// an owner death (readers do not write), and the death is counted.
    @Test func aKilledReaderDoesNotBlockAWriter() throws {
        let scratch = Scratch()
        let pool = scratch.file("k.pool")
        let reader = try Child.worker("hold", "--pool", pool, "--lock", "k", "--shared")
        _ = try #require(reader.waitForEvent("acquired"))
        let writer = try Child.worker("hold", "--pool", pool, "--lock", "k", "--seconds", "0", "--timeout", "20")
        try waitForDrain(pool: pool, lock: "k")
        reader.kill()
        reader.wait()
        let start = Date()
        let event = try #require(writer.waitForEvent("acquired", timeout: 10))
        #expect(Date().timeIntervalSince(start) < 1, "dead reader discounted within the check interval")
        #expect(event["ownerDied"] as? Bool == false)
        #expect(writer.wait() == 0)
        let status = try #require(try Pool.open(path: pool).status().locks.first { $0.name == "k" })
        #expect(status.shared.readerDeaths == 1 && status.ownerDeaths == 0 && status.sharedHolds == 0)
    }

    /// A writer that dies holding the lock: waiting readers take it over, and every shared
    /// holder is told until an exclusive holder repairs.
    @Test func readersLearnThatTheWriterDied() throws {
        let scratch = Scratch()
        let pool = scratch.file("w.pool")
        let writer = try Child.worker("hold", "--pool", pool, "--lock", "w")
        _ = try #require(writer.waitForEvent("acquired"))
        let reader = try Child.worker("hold", "--pool", pool, "--lock", "w", "--shared", "--seconds", "0")
        usleep(100_000)
        writer.kill()
        writer.wait()
        let seen = try #require(reader.waitForEvent("acquired", timeout: 10))
        #expect(seen["ownerDied"] as? Bool == true && seen["deadPid"] as? Int == Int(writer.pid))
        #expect(reader.wait() == 0)
        let next = try Child.worker("hold", "--pool", pool, "--lock", "w", "--seconds", "0")
        #expect(try #require(next.waitForEvent("acquired"))["ownerDied"] as? Bool == true)
        #expect(next.wait() == 0)
        let clean = try Child.worker("hold", "--pool", pool, "--lock", "w", "--shared", "--seconds", "0")
        #expect(try #require(clean.waitForEvent("acquired"))["ownerDied"] as? Bool == false)
        #expect(clean.wait() == 0)
        let status = try #require(try Pool.open(path: pool).status().locks.first { $0.name == "w" })
        #expect(status.ownerDeaths == 1)
        // The reader watched the writer while it waited, and made its record then: the record
        // must name the writer that died, as one made after the death would.
        let deaths = try AuditTests.events(pool).filter { $0["event"] as? String == "lock.owner-death" }
        #expect(deaths.first?["object"] as? String == "lock 'w' (package) taken over shared: previous holder pid \(writer.pid) (pmll-worker) died while holding the lock",
                "\(deaths)")
    }

    /// Readers and writers in several processes, with readers and writers SIGKILLed at random
    /// points of acquire, hold and release: no reader ever sees a writer inside, no writer
    /// sees anyone, and the survivors finish.
    @Test func aMixWithRandomKillsKeepsExclusion() throws {
        let scratch = Scratch()
        let pool = scratch.file("m.pool"), file = scratch.file("m.counters")
        var children = try (0..<4).map { _ in try Child.worker("rw-mix", "--pool", pool, "--lock", "m", "--file", file, "--seconds", "3", "--hold-microseconds", "200") }
        for child in children { _ = try #require(child.waitForEvent("started")) }
        for round in 0..<6 {
            usleep(UInt32.random(in: 50_000...250_000))
            children[round % children.count].kill()
            children[round % children.count].wait()
            children[round % children.count] = try Child.worker("rw-mix", "--pool", pool, "--lock", "m", "--file", file, "--seconds", "1.5", "--hold-microseconds", "200")
        }
        for child in children { #expect(child.wait(timeout: 60) == 0) }
        let counters = try Data(contentsOf: URL(fileURLWithPath: file)).withUnsafeBytes { Array($0.bindMemory(to: UInt64.self).prefix(16)) }
        #expect(counters[2] == 0, "exclusion violated \(counters[2]) times; first: pid \(counters[8]) in mode \(counters[9]) saw pid \(counters[10]) in mode \(counters[11]), /proc state \(UnicodeScalar(UInt8(counters[12] & 0xff)))")
        #expect(counters[3] > 100 && counters[4] > 10)
        let status = try #require(try Pool.open(path: pool).status().locks.first { $0.name == "m" })
        #expect(status.state == .free || status.state == .abandoned)
    }

    /// A continuous stream of overlapping readers (the lock is never free of readers) does not
    /// starve a writer: it gets in within a few hold times. flock(2) LOCK_SH would starve it.
    @Test func aReaderStreamDoesNotStarveAWriter() throws {
        let scratch = Scratch()
        let pool = scratch.file("t.pool"), file = scratch.file("t.counters")
        let readers = try (0..<3).map { _ in try Child.worker("rw-mix", "--pool", pool, "--lock", "t", "--file", file, "--read-percent", "100", "--hold-microseconds", "20000", "--seconds", "4") }
        for reader in readers { _ = try #require(reader.waitForEvent("started")) }
        usleep(300_000)
        let start = Date()
        let writer = try Child.worker("hold", "--pool", pool, "--lock", "t", "--seconds", "0", "--timeout", "3")
        _ = try #require(writer.waitForEvent("acquired", timeout: 5))
        #expect(Date().timeIntervalSince(start) < 2)
        #expect(writer.wait() == 0)
        for reader in readers { #expect(reader.wait() == 0) }
    }

    @Test func hierarchyRulesHoldForSharedHolds() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("h.pool"))
        let registry = try pool.lock("h/registry", Registry.self)
        let package = try pool.lock("h/package", Package.self)
        let other = try pool.lock("h/other", Package.self)
        try pool.withLockContext { root in
            try root.withSharedLock(registry: registry) { r in
                try r.withSharedLock(package: package) { p in #expect(p.acquisitions.count == 1) }
            }
        }
        // Same level nested through the untyped API: caught at run time.
        #expect(throws: PMLLError.self) {
            try package.handle.withSharedLock { _ in try other.handle.withSharedLock { _ in } }
        }
        #expect(throws: PMLLError.self) {
            try package.handle.withSharedLock { _ in try registry.handle.withLock { _ in } }
        }
        // Nothing stays counted after the failures.
        #expect(try #require(pool.status().locks.first { $0.name == "h/package" }).sharedHolds == 0)
    }

    /// The async forms, without blocking a cooperative thread (the exclusive holder is a
    /// thread of this process: waiting on a child process here stalled the other async tests).
    @Test func sharedAsyncForms() async throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("a.pool"))
        let lock = try pool.lock(named: "a", level: .package)
        let value = try await lock.withSharedLock(timeout: .seconds(1)) { _ in
            try await Task.sleep(for: .milliseconds(10))
            return 7
        }
        #expect(value == 7)
        let release = DispatchSemaphore(value: 0)
        await withCheckedContinuation { (held: CheckedContinuation<Void, Never>) in
            Thread {
                try? lock.withLock { _ in
                    held.resume()
                    release.wait()
                }
            }.start()
        }
        await #expect(throws: PMLLError.self) { try await lock.withSharedLock(timeout: .milliseconds(50)) { _ in } }
        release.signal()
        let again = try await lock.withSharedLock(timeout: .seconds(10)) { _ in 8 }
        #expect(again == 8)
    }

    @Test func sharedTryForm() throws {
        let scratch = Scratch()
        let path = scratch.file("t.pool")
        let lock = try Pool.open(path: path).lock(named: "a", level: .package)
        let holder = try Child.worker("hold", "--pool", path, "--lock", "a")
        _ = try #require(holder.waitForEvent("acquired"))
        #expect(try lock.withSharedLockIfAvailable { _ in 1 } == nil)
        holder.kill()
        holder.wait()
        #expect(try lock.withSharedLock(timeout: .seconds(10)) { _ in 1 } == 1)
        #expect(try lock.withSharedLockIfAvailable { _ in 2 } == 2)
    }
}

/// Waits until a writer owns `lock` and is waiting for its shared holders to leave.
func waitForDrain(pool: String, lock: String, timeout: Double = 20) throws {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if let p = try? Pool.open(path: pool, options: { var o = PoolOptions(); o.create = false; return o }()),
           let entry = p.status().locks.first(where: { $0.name == lock }), entry.state == .held, entry.sharedHolds > 0 {
            return
        }
        usleep(10_000)
    }
    Issue.record("no writer started draining lock \(lock)")
}

@Suite("Shared locks: limits and status")
struct SharedLockLimitTests {
    /// One process can hold at most ReaderLedger.words distinct locks shared at once; the next
    /// one is a typed poolFull error, not a silent unprotected hold.
    @Test func aFullReaderLedgerIsATypedError() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("l.pool"))
        let capacity = 17
        let locks = try (0...capacity).map { try pool.lock(named: "ledger/\($0)", level: .package) }
        let holding = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let threads = (0..<capacity).map { i in
            Thread {
                try? locks[i].withSharedLock { _ in
                    holding.signal()
                    release.wait()
                }
            }
        }
        threads.forEach { $0.start() }
        for _ in 0..<capacity { holding.wait() }
        #expect {
            try locks[capacity].withSharedLock { _ in }
        } throws: { error in
            guard case PMLLError.poolFull(let table, let cap) = error else { return false }
            return table.contains("reader ledger") && cap == capacity
        }
        for _ in 0..<capacity { release.signal() }
        // Everything is free again, and nothing stayed counted.
        var finished = 0
        for _ in 0..<500 where finished < capacity + 1 {
            finished = pool.status().locks.filter { $0.name.hasPrefix("ledger/") && $0.sharedHolds == 0 }.count
            usleep(10_000)
        }
        #expect(finished == capacity + 1)
        #expect(try locks[capacity].withSharedLockIfAvailable { _ in true } == true)
    }

    @Test func statusNamesTheReaders() throws {
        let scratch = Scratch()
        let pool = scratch.file("s.pool")
        let reader = try Child(Binaries.pmll, ["lock", "--pool", pool, "--shared", "idx", "--", "sleep", "30"])
        defer { reader.killTree(); reader.wait() }
        try waitForReaders(pool: pool, lock: "idx")
        let json = try run(Binaries.pmll, ["status", "--pool", pool, "--json"])
        #expect(json.status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let lock = try #require((object["locks"] as? [[String: Any]])?.first { $0["name"] as? String == "idx" })
        #expect(lock["state"] as? String == "shared" && lock["sharedHolds"] as? Int == 1)
        let readers = try #require(lock["readers"] as? [[String: Any]])
        #expect(readers.first?["pid"] as? Int == Int(reader.pid) && readers.first?["commandName"] as? String == "sleep")
        let table = try run(Binaries.pmll, ["status", "--pool", pool])
        #expect(table.stdout.contains("shared") && table.stdout.contains("\(reader.pid) sleep"))
    }
}
