import CPMLL
import PMLLCore
import PMLLLocks
import PMLLQueues
import PMLLStore

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
    /// The pool file's size now (the created size plus what the state store grew).
    public let sizeBytes: UInt64
    public let createdAtNanoseconds: UInt64
    public let persistentMemory: Bool
    public let processCapacity: UInt32
    /// Entries of the lock table now: those made at creation and those of its extensions
    /// (the table grows when it fills, up to ``lockCapacityLimit``).
    public let lockCapacity: UInt32
    /// Entries the lock table may grow to.
    public let lockCapacityLimit: UInt32
    /// Queues the queue table holds now (made at creation and in its extensions), and may
    /// grow to.
    public let queueCapacity: UInt32
    public let queueCapacityLimit: UInt32
    public let volatileResets: UInt64
    public let processes: [Process]
    public let locks: [LockStatus]
    public let queues: [QueueStats]
    /// Queue heads that fail their checksum (their queues are not shown; `pmll check`).
    public let damagedQueueHeads: [UInt32]
    /// Space in the state store (nil if the pool has none).
    public let store: StoreUsage?
    /// Transaction commits, conflicts and retries since the pool was created (nil if it has
    /// no state store).
    public let transactions: TransactionStatistics?
    /// Bytes of each section of the file.
    public let sections: [String: Int]
    /// The last scheduled check (nil if none ever ran).
    public let lastCheck: CheckRecord?
    /// The last scheduled backup (nil if none ever ran).
    public let lastBackup: BackupRecord?
    /// Read through a read-only attach (``PoolOptions/readOnly``).
    public let readOnlyView: Bool
}

extension Pool {
    /// Reads every process slot, lock entry and queue head, and the store's usage.
    /// Lock-free and approximate under change: each field is read atomically, a row as a
    /// whole is not.
    public func status(includingSelf: Bool = true) -> PoolStatus {
        let locks = lockStatuses()
        var attached: [PoolStatus.Process] = []
        for index in memory.slots {
            let slot = memory.slot(index)
            guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE, includingSelf || index != self.slot else { continue }
            let token = OwnerToken(slot: index, generation: pmll_load32(pmll_slot_generation(slot)))
            attached.append(.init(slot: index.rawValue, pid: slot.pointee.pid, commandName: String(fixedCString: slot.pointee.comm), alive: processes.isAlive(token)))
        }
        let h = memory.header.pointee
        let (queues, damagedHeads) = readableQueues()
        return PoolStatus(
            path: path, formatVersion: h.format_version, sizeBytes: UInt64((try? memory.mapping.fileSize()) ?? Int(h.pool_size)), createdAtNanoseconds: h.created_at_ns,
            persistentMemory: memory.persistence.isPmem, processCapacity: h.process_capacity, lockCapacity: memory.lockExtents.known,
            lockCapacityLimit: memory.lockExtents.maximum, queueCapacity: memory.queueExtents.known,
            queueCapacityLimit: memory.queueExtents.maximum,
            volatileResets: h.volatile_resets, processes: attached, locks: locks,
            queues: queues.sorted { $0.name < $1.name }, damagedQueueHeads: damagedHeads,
            store: store.exists ? try? storeUsage() : nil,
            transactions: store.exists ? store.statistics() : nil,
            sections: ["header": Int(PMLL_HEADER_SIZE), "processTable": memory.layout.processTable.count,
                       "lockTable": memory.layout.lockTable.count, "queueTable": memory.layout.queueTable.count,
                       "auditRing": memory.layout.auditRing.count, "stateStore": memory.layout.heap.count],
            lastCheck: store.exists ? (try? lastScheduledCheck()) ?? nil : nil,
            lastBackup: store.exists ? (try? lastScheduledBackup()) ?? nil : nil,
            readOnlyView: isReadOnly)
    }

}
