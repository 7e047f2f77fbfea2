import CPMLL
public import PMLLCore

/// One lock as `pmll status` shows it. The JSON form (Codable) is a documented contract.
public struct LockStatus: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case free
        case held
        /// Held by a process that is gone; the next acquirer takes it over.
        case abandoned
        /// Held shared (see ``LockStatus/readers``), no exclusive holder.
        case shared
    }
    public let name: String
    public let level: LockLevel
    public let state: State
    public let holder: HolderInfo?
    /// Seconds since the holder took the lock: exact if it had to wait for it, otherwise
    /// since the hold was first observed (a lower bound; see Docs/LockProtocol.md).
    public let heldForSeconds: Double?
    public let waiters: Int
    public let acquisitions: UInt64
    public let contended: UInt64
    public let timeouts: UInt64
    public let ownerDeaths: UInt64
    public let totalWaitNanoseconds: UInt64
    public let maxWaitNanoseconds: UInt64
    /// Releases that handed the lock to a waiter starving past the threshold.
    public let handoffs: UInt64
    /// Handoffs whose target did not claim them in time (stopped, or starved of CPU), taken
    /// by another waiter instead.
    public let handoffsUnclaimed: UInt64
    /// The next holder will be told that a previous holder did not finish.
    public let ownerDiedPending: Bool
    /// The entry's name or level fails its checksum: the name shown may not be the one the
    /// lock was created with (`pmll check` reports it).
    public let damaged: Bool
    /// The most recent owner death recorded for this lock.
    public let lastOwnerDeath: OwnerDeath?
    /// Live processes holding the lock shared (a writer may be holding the word while
    /// they leave: `state` is then `held`).
    public let readers: [ReaderInfo]
    /// Shared holds: those counted in the lock (including those of readers that died and that
    /// no writer has discounted yet), or, if more, those in the ledgers of live processes
    /// (holds through the reader bias are not counted in the lock).
    public let sharedHolds: Int
    public let shared: SharedLockStatistics
}

/// Statistics of shared holds, and of exclusive acquisitions waiting for them to leave.
public struct SharedLockStatistics: Codable, Sendable, Equatable {
    public let acquisitions: UInt64
    public let contended: UInt64
    public let totalWaitNanoseconds: UInt64
    public let maxWaitNanoseconds: UInt64
    /// Shared holds of processes that died holding them, counted once when their ledger is
    /// retired: by a writer that finds them dead, by the process that reuses their slot, or by
    /// the reset when the last process left.
    public let readerDeaths: UInt64
    /// Exclusive acquisitions that had to wait for shared holders to leave, and how long.
    public let drains: UInt64
    public let drainTotalNanoseconds: UInt64
    public let drainMaxNanoseconds: UInt64
}

extension Pool {
    /// Every user lock's row of ``PoolStatus``. Lock-free and approximate under change: each
    /// field is read atomically, the row as a whole is not.
    package func lockStatuses() -> [LockStatus] {
        let waiters = processes.waiterCounts()
        let ledgers = processes.allReaders()
        let now = Clock.realtimeNanoseconds
        var locks: [LockStatus] = []
        for index in memory.locks {
            let entry = memory.lock(index)
            guard pmll_load32(pmll_entry_state(entry)) == PMLL_ENTRY_READY,
                  let level = LockLevel(rawValue: entry.pointee.level),
                  !String(fixedCString: entry.pointee.name).hasPrefix(LockTable.reservedPrefix) else { continue }
            let word = pmll_load32(pmll_entry_word(entry))
            let owner = OwnerToken.owner(ofWord: word)
            var state = LockStatus.State.free
            var holder: HolderInfo?
            let since = owner != nil ? HoldStamp.heldSince(entry) : 0
            if let owner {
                state = processes.isAlive(owner) ? .held : .abandoned
                holder = processes.info(of: owner, heldSince: since)
            }
            let counted = Int(pmll_load64(pmll_entry_readers(entry)) & PMLL_READERS_COUNT)
            let live = ledgers[index]
            let holds = max(counted, live?.holds ?? 0)
            if owner == nil && holds > 0 { state = .shared }
            let stats = pmll_entry_shared(entry)
            let shared = SharedLockStatistics(
                acquisitions: SharedHolds.acquisitions(entry), contended: pmll_load64(&stats.pointee.contended),
                totalWaitNanoseconds: pmll_load64(&stats.pointee.total_wait_ns), maxWaitNanoseconds: pmll_load64(&stats.pointee.max_wait_ns),
                readerDeaths: pmll_load64(&stats.pointee.reader_deaths), drains: pmll_load64(&stats.pointee.drains),
                drainTotalNanoseconds: pmll_load64(&stats.pointee.drain_total_ns), drainMaxNanoseconds: pmll_load64(&stats.pointee.drain_max_ns))
            let deaths = entry.pointee.owner_deaths
            let nameBytes = withUnsafeBytes(of: entry.pointee.name) { Array($0.prefix(Int(min(entry.pointee.name_length, PMLL_NAME_MAX)))) }
            let damaged = entry.pointee.entry_checksum != LockTable.checksum(level: entry.pointee.level, name: nameBytes)
            locks.append(LockStatus(
                name: String(fixedCString: entry.pointee.name), level: level, state: state, holder: holder,
                heldForSeconds: owner != nil ? Double(max(0, now.saturatingSubtract(since))) / 1e9 : nil,
                waiters: waiters[index] ?? 0,
                acquisitions: entry.pointee.acquisitions, contended: entry.pointee.contended,
                timeouts: pmll_load64(pmll_entry_timeouts(entry)), ownerDeaths: deaths,
                totalWaitNanoseconds: entry.pointee.total_wait_ns, maxWaitNanoseconds: entry.pointee.max_wait_ns,
                handoffs: entry.pointee.handoffs, handoffsUnclaimed: pmll_load64(&entry.pointee.handoffs_unclaimed),
                ownerDiedPending: word & PMLL_WORD_DIED != 0, damaged: damaged,
                lastOwnerDeath: entry.pointee.dead_detected_ns != 0 ? LockDeath.read(entry) : nil,
                readers: live?.readers ?? [], sharedHolds: holds, shared: shared))
        }
        locks.sort { $0.name < $1.name }
        return locks
    }

    /// The lock named `name` if the pool has one, at whatever level, without creating it.
    public func existingLock(named name: String) throws(PMLLError) -> LockHandle? {
        guard let (index, level) = try table.lookup(name) else { return nil }
        return LockHandle(pool: self, id: LockID(name: name, level: level), index: index)
    }
}
