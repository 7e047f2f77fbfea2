import CPMLL
import Synchronization
package import PMLLCore

/// The lock layer's per-pool state: the lock table and this process's name → index cache.
package final class LockService: Sendable {
    package let table: LockTable
    let cache = Mutex(LockNameCache())

    init(_ pool: Pool) {
        let memory = pool.memory
        // Unowned, not weak: the table lives in the pool's services and grows only through the
        // pool's own methods. A weak reference would give the pool a side table, and from then
        // on every retain and release of it takes the runtime's slow path (a point read paid
        // 0.2 us of its 0.9 for that: Docs/Benchmarks.md, "Point reads without a side table").
        table = LockTable(memory: memory, fd: pool.fd, path: pool.path) { [unowned pool] k throws(PMLLError) in
            try pool.extendTable(memory.lockExtents, k, name: "lock")
        }
    }
}

/// This process's name → index cache over the lock table (``Pool/lock(named:level:)``):
/// direct-mapped by the name's hash, 256 entries, made at the first insert; a miss looks in
/// the table itself. Not a `Dictionary`: bounded in a process that names millions of locks,
/// and a `[String: LockIndex]` made `pmll lock` pay the runtime's first conformance lookup
/// (`String: Hashable`, a walk over every conformance record of the executable: about 3 % of
/// the process; Docs/Benchmarks.md, issue 23).
struct LockNameCache: Sendable {
    private static let size = 256
    private var entries: [Entry?] = []

    private struct Entry: Sendable {
        let name: String
        let index: LockIndex
    }

    func index(of name: String) -> LockIndex? {
        guard !entries.isEmpty, let entry = entries[Self.slot(of: name)], entry.name == name else { return nil }
        return entry.index
    }

    mutating func insert(_ name: String, _ index: LockIndex) {
        if entries.isEmpty { entries = Array(repeating: nil, count: Self.size) }
        entries[Self.slot(of: name)] = Entry(name: name, index: index)
    }

    private static func slot(of name: String) -> Int { name.hashValue & (size - 1) }
}

extension Pool {
    package var lockService: LockService { services.get(.locks) { LockService(self) } }
    package var table: LockTable { lockService.table }
}

/// The lock layer's part of the volatile reset (see ``VolatileReset``).
package enum LockWords {
    /// Frees every lock. A lock that was held is left marked DIED, with its holder recorded,
    /// so that the next acquirer still learns that a critical section did not complete.
    package static func resetVolatile(_ memory: PoolMemory) {
        // Shared holds of processes that are all gone (their ledgers, before the slots are cleared).
        for slot in memory.slots { LockDeath.countReaderDeaths(memory, ReaderLedger.retire(memory.slot(slot))) }
        let now = UInt64(Clock.realtimeNanoseconds)
        for index in memory.locks {
            let entry = memory.lock(index)
            let word = entry.pointee.word
            let owner = word & PMLL_OWNER_MASK
            var next = word & PMLL_WORD_DIED
            if owner != 0 && word & PMLL_WORD_NO_DEATH == 0 {
                LockDeath.record(entry, owner: OwnerToken(rawValue: owner), memory: memory, detectedAt: now)
                entry.pointee.owner_deaths &+= 1
                next = PMLL_WORD_DIED
            }
            storeIfChanged(&entry.pointee.word, entry.pointee.state == PMLL_ENTRY_READY ? next : 0)
            storeIfChanged(&entry.pointee.handoff_target, 0)
            // The count of those holds (counted above from the ledgers); the acquisition total is kept.
            let readers = entry.pointee.readers
            storeIfChanged(&entry.pointee.readers, readers & ~(PMLL_READERS_COUNT | PMLL_READERS_DRAIN | PMLL_READERS_BIASED | PMLL_READERS_INHIBITED))
        }
    }
}
