import CPMLL
import Foundation
import PMLL
@testable import PMLLCore
@testable import PMLLLocks
@testable import PMLLStore
import Testing

/// Every lock scope (one lock, several, async) repairs after an owner death the same way,
/// and a repair that fails never leaves a lock held.
@Suite struct LockScopeTests {
    /// A holder of lock "repair" is killed in the middle of a commit; this process then
    /// damages the undo log the holder left (an entry pointing outside the store tables,
    /// with a valid checksum), so rolling it back fails. Every scope must throw the typed
    /// error and leave the lock free, marked inconsistent for the next holder.
    @Test func aFailedRepairReleasesEveryLockOfEveryKindOfScope() async throws {
        let scratch = Scratch()
        let path = scratch.file("r.pool")
        let pool = try Pool.open(path: path)
        try pool.transaction { tx in try tx.set("seed", "1") }   // the store exists before the crash
        let lock = try pool.lock(named: "repair", level: .package)
        let other = try pool.lock(named: "repair-other", level: .package)
        let victim = try Child.worker("tx-set", "--pool", path, "--lock", "repair", "k=v", environment: ["PMLL_CRASH_AT": "tx.applying"])
        #expect(victim.wait() == 128 + SIGKILL)
        let damaged = try damagePendingLog(pool)

        let failure = PMLLError.transactionRecoveryFailed(reason: "undo log \(damaged) has an entry outside the store tables")
        await #expect(throws: failure) { try await lock.withLock { _ async in } }
        #expect(lock.currentHolder == nil)
        #expect(throws: failure) { try lock.withLock { _ in } }
        #expect(lock.currentHolder == nil)
        #expect(throws: failure) { try pool.withLocks([other, lock]) { _ in } }
        #expect(lock.currentHolder == nil && other.currentHolder == nil)
        await #expect(throws: failure) { try await pool.withLocks([other, lock]) { _ async in } }
        #expect(lock.currentHolder == nil && other.currentHolder == nil)
        // Each scope released its locks marked: the next holder is told, as after a death.
        #expect(pmll_load32(pmll_entry_word(lock.entry)) & PMLL_WORD_DIED != 0)
        #expect(pmll_load32(pmll_entry_word(other.entry)) & PMLL_WORD_DIED != 0)
    }

    /// Points the first entry of the pending undo log at the pool header and re-seals it.
    func damagePendingLog(_ pool: Pool) throws -> Int {
        let store = try pool.stateStore()
        let pending = try #require((0..<store.layout.logSlots).first { pool.isPending(store.logHeader($0)) })
        let header = store.logHeader(pending)
        let entry = (UnsafeMutableRawPointer(header) + MemoryLayout<pmll_log_header_t>.size).assumingMemoryBound(to: pmll_log_entry_t.self)
        entry.pointee.offset = 0
        header.pointee.checksum = Pool.logChecksum(header)
        return pending
    }
}
