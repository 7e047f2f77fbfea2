import CPMLL

/// One lock as `pmll status` shows it. The JSON form (Codable) is a documented contract.
public struct LockStatus: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case free
        case held
        /// Held by a process that is gone; the next acquirer takes it over.
        case abandoned
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
    /// The next holder will be told that a previous holder did not finish.
    public let ownerDiedPending: Bool
    /// The most recent owner death recorded for this lock.
    public let lastOwnerDeath: OwnerDeath?
}

/// A snapshot of the whole pool.
public struct PoolStatus: Codable, Sendable {
    public struct Process: Codable, Sendable, Equatable {
        public let slot: UInt32
        public let pid: Int32
        public let commandName: String
        public let alive: Bool
    }
    public let path: String
    public let formatVersion: UInt32
    public let sizeBytes: UInt64
    public let createdAtNanoseconds: UInt64
    public let persistentMemory: Bool
    public let processCapacity: UInt32
    public let lockCapacity: UInt32
    public let volatileResets: UInt64
    public let processes: [Process]
    public let locks: [LockStatus]
    public let queues: [QueueStats]
    /// Space in the state store (nil if the pool has none).
    public let store: StoreUsage?
    /// Bytes of each section of the file.
    public let sections: [String: Int]
}

extension Pool {
    /// Reads every process slot and lock entry. Lock-free and approximate under change:
    /// each field is read atomically, the row as a whole is not.
    public func status(includingSelf: Bool = true) -> PoolStatus {
        let waiters = processes.waiterCounts()
        let now = Clock.realtimeNanoseconds
        var locks: [LockStatus] = []
        for index in 0..<memory.lockCapacity {
            let entry = memory.lock(index)
            guard pmll_load32(pmll_entry_state(entry)) == PMLL_ENTRY_READY,
                  let level = LockLevel(rawValue: entry.pointee.level),
                  !String(fixedCString: entry.pointee.name).hasPrefix(LockTable.reservedPrefix) else { continue }
            let word = pmll_load32(pmll_entry_word(entry))
            let owner = word & PMLL_OWNER_MASK
            var state = LockStatus.State.free
            var holder: HolderInfo?
            let since = owner != 0 ? HoldStamp.heldSince(entry) : 0
            if owner != 0 {
                state = processes.isAlive(owner) ? .held : .abandoned
                holder = processes.info(of: owner, heldSince: since)
            }
            let deaths = entry.pointee.owner_deaths
            locks.append(LockStatus(
                name: String(fixedCString: entry.pointee.name), level: level, state: state, holder: holder,
                heldForSeconds: owner != 0 ? Double(max(0, now - since)) / 1e9 : nil,
                waiters: waiters[index] ?? 0,
                acquisitions: entry.pointee.acquisitions, contended: entry.pointee.contended,
                timeouts: pmll_load64(pmll_entry_timeouts(entry)), ownerDeaths: deaths,
                totalWaitNanoseconds: entry.pointee.total_wait_ns, maxWaitNanoseconds: entry.pointee.max_wait_ns,
                handoffs: entry.pointee.handoffs,
                ownerDiedPending: word & PMLL_WORD_DIED != 0,
                lastOwnerDeath: entry.pointee.dead_detected_ns != 0 ? LockDeath.read(entry) : nil))
        }
        locks.sort { $0.name < $1.name }
        var attached: [PoolStatus.Process] = []
        for index in 0..<memory.processCapacity {
            let slot = memory.slot(index)
            guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE, includingSelf || index != self.slot else { continue }
            let token = OwnerToken.make(slot: index, generation: pmll_load32(pmll_slot_generation(slot)))
            attached.append(.init(slot: index, pid: slot.pointee.pid, commandName: String(fixedCString: slot.pointee.comm), alive: processes.isAlive(token)))
        }
        let h = memory.header.pointee
        return PoolStatus(
            path: path, formatVersion: h.format_version, sizeBytes: h.pool_size, createdAtNanoseconds: h.created_at_ns,
            persistentMemory: memory.persistence.isPmem, processCapacity: h.process_capacity, lockCapacity: h.lock_capacity,
            volatileResets: h.volatile_resets, processes: attached, locks: locks,
            queues: ((try? queues()) ?? []).sorted { $0.name < $1.name },
            store: store.blockCount > 0 ? try? storeUsage() : nil,
            sections: ["header": Int(PMLL_HEADER_SIZE), "processTable": memory.layout.processTable.count,
                       "lockTable": memory.layout.lockTable.count, "queueTable": memory.layout.queueTable.count,
                       "stateStore": memory.layout.heap.count])
    }

    /// The lock named `name` if the pool has one, at whatever level, without creating it.
    public func existingLock(named name: String) throws(PMLLError) -> LockHandle? {
        guard let (index, level) = try table.lookup(name) else { return nil }
        return LockHandle(pool: self, id: LockID(name: name, level: level), index: index)
    }
}
