import CPMLL
import Foundation
@testable import PMLL
import PMLLCore
@testable import PMLLLocks
import Testing

/// Reader bias on user locks (Docs/LockProtocol.md "Reader bias"): biased holders are in
/// their process's ledger only, yet writers wait for them, status shows them, their
/// acquisitions and deaths are counted, and a revocation that gives up leaves the bias on.
@Suite("Reader bias", .serialized)
struct ReaderBiasTests {
    /// A pool in this process, lock `name`, with the bias turned on by one counted hold here.
    static func biased(_ path: String, _ name: String) throws -> (Pool, LockHandle) {
        let pool = try Pool.open(path: path)
        let lock = try pool.lock(named: name, level: .package)
        try lock.withSharedLock { _ in }
        #expect(readers(lock).biased, "a counted shared hold turns the bias on")
        return (pool, lock)
    }

    /// A reader process holding `name` biased (it held it twice before, so it tries the bias
    /// first), for `seconds` (default: until killed).
    static func biasedReader(_ path: String, _ name: String, seconds: String? = nil) throws -> Child {
        let reader = try Child(Binaries.worker, ["hold", "--pool", path, "--lock", name, "--shared", "--warm", "2"] + (seconds.map { ["--seconds", $0] } ?? []))
        _ = try #require(reader.waitForEvent("acquired"))
        return reader
    }

    static func readers(_ lock: LockHandle) -> (count: UInt64, biased: Bool) {
        let v = pmll_load64(pmll_entry_readers(lock.entry))
        return (v & PMLL_READERS_COUNT, v & PMLL_READERS_BIASED != 0)
    }

    static func status(_ pool: Pool, _ name: String) throws -> LockStatus {
        try #require(pool.status().locks.first { $0.name == name })
    }

    /// A biased reader in another process: not counted in the lock, shown by status, waited
    /// for by a writer, and when it is SIGKILLed the writer goes in and its death is counted.
    @Test func aKilledBiasedReaderIsFoundInTheLedgersAndCounted() throws {
        let scratch = Scratch()
        let path = scratch.file("k.pool")
        let (pool, lock) = try Self.biased(path, "k")
        let reader = try Self.biasedReader(path, "k")
        defer { reader.stopIfRunning() }
        #expect(Self.readers(lock) == (0, true), "the reader went in through the bias")
        var row = try Self.status(pool, "k")
        #expect(row.state == .shared && row.sharedHolds == 1 && row.readers.map(\.pid) == [reader.pid])

        let writer = try Child.worker("hold", "--pool", path, "--lock", "k", "--seconds", "0", "--timeout", "20")
        try waitForDrain(pool: path, lock: "k")
        #expect(writer.waitForEvent("acquired", timeout: 0.3) == nil, "a writer went in beside a biased reader")
        reader.kill()
        reader.wait()
        let start = Date()
        let event = try #require(writer.waitForEvent("acquired", timeout: 10))
        #expect(Date().timeIntervalSince(start) < 2, "the dead reader was found by the writer's scans")
        #expect(event["ownerDied"] as? Bool == false)
        #expect(writer.wait() == 0)
        #expect(!Self.readers(lock).biased, "the writer turned the bias off once the ledgers were empty")
        row = try Self.status(pool, "k")
        #expect(row.shared.readerDeaths == 1 && row.ownerDeaths == 0 && row.sharedHolds == 0 && row.state == .free)
    }

    /// A writer that gives up while biased holders are in turns the bias back on: the next
    /// writer must find them (without it, that writer saw no bias and no count, and went in).
    @Test func aRevocationThatTimesOutLeavesTheBiasOn() throws {
        let scratch = Scratch()
        let path = scratch.file("t.pool")
        let (_, lock) = try Self.biased(path, "t")
        let reader = try Self.biasedReader(path, "t", seconds: "3")
        defer { reader.stopIfRunning() }
        #expect(throws: PMLLError.self) { try lock.withLock(timeout: .milliseconds(100)) { _ in } }
        #expect(Self.readers(lock).biased)
        let writer = try Child.worker("hold", "--pool", path, "--lock", "t", "--seconds", "0", "--timeout", "0.3")
        #expect(writer.wait() == 75, "a second writer went in beside the biased reader")
        #expect(reader.wait() == 0)
        #expect(try lock.withLock(timeout: .seconds(10)) { _ in true })
    }

    /// The async writer waits for biased readers on the waiter thread and gets the lock when
    /// they leave.
    @Test func anAsyncWriterWaitsForABiasedReader() async throws {
        let scratch = Scratch()
        let path = scratch.file("a.pool")
        let (_, lock) = try Self.biased(path, "a")
        let reader = try Self.biasedReader(path, "a", seconds: "0.5")
        defer { reader.stopIfRunning() }
        let start = Date()
        let got = try await lock.withLock(timeout: .seconds(20)) { _ in Date() }
        #expect(got.timeIntervalSince(start) > 0.2, "the writer did not wait for the biased reader")
        #expect(reader.events.contains { $0["event"] as? String == "released" })
        #expect(reader.wait() == 0)
    }

    /// Biased acquisitions are counted: this process's own at once (its tallies), another
    /// process's when it exits.
    @Test func biasedAcquisitionsAreCounted() throws {
        let scratch = Scratch()
        let path = scratch.file("c.pool")
        let (pool, lock) = try Self.biased(path, "c")
        for _ in 0..<2_000 { try lock.withSharedLock { _ in } }
        #expect(try Self.status(pool, "c").shared.acquisitions == 2_001)
        // Each takes it once counted, then 9 times biased (in its tally until it exits).
        for _ in 0..<3 {
            #expect(try Child.worker("hold", "--pool", path, "--lock", "c", "--shared", "--seconds", "0", "--warm", "9").wait() == 0)
        }
        #expect(try Self.status(pool, "c").shared.acquisitions == 2_031)
        // A reader killed holding: its death is counted once, by the next writer (its biased
        // acquisitions, still in its tally, are lost with it: 1 of 4 is counted).
        let victim = try Child.worker("hold", "--pool", path, "--lock", "c", "--shared", "--warm", "3")
        _ = try #require(victim.waitForEvent("acquired"))
        victim.kill()
        victim.wait()
        #expect(try lock.withLock(timeout: .seconds(10)) { _ in true })
        #expect(try lock.withLock(timeout: .seconds(10)) { _ in true })
        var row = try Self.status(pool, "c")
        #expect(row.shared.readerDeaths == 1 && row.shared.acquisitions == 2_032)
        // A shared try that finds a writer in (with the bias on) counts nothing.
        // Past the revocation's inhibition (9 × the writer's ledger scan, at least 0.1 ms: under
        // load the scan itself can take a quarter of a millisecond), every 16th counted hold
        // looks whether the bias may come back.
        let until = Date().addingTimeInterval(5)
        while !Self.readers(lock).biased && Date() < until {
            for _ in 0..<32 where !Self.readers(lock).biased { try lock.withSharedLock { _ in } }
            usleep(1_000)
        }
        #expect(Self.readers(lock).biased)
        let before = try Self.status(pool, "c").shared.acquisitions
        let writer = try Child.worker("hold", "--pool", path, "--lock", "c", "--seconds", "30")
        defer { writer.stopIfRunning() }
        _ = try #require(writer.waitForEvent("acquired"))
        #expect(try lock.withSharedLockIfAvailable { _ in true } == nil)
        row = try Self.status(pool, "c")
        #expect(row.shared.acquisitions == before && row.sharedHolds == 0)
    }
}
