package import CPMLL
package import PMLLCore
import PMLLLocks
import PMLLStore

/// The pool's queue heads: found by a linear scan (a pool holds few queues), created under
/// the TABLE byte lock like lock entries. A full table grows (``TableExtents``). Each queue owns a lock entry named
/// `pmll:queue/NAME` that serialises submissions.
package struct QueueTable {
    package let memory: PoolMemory
    package let path: String

    package init(memory: PoolMemory, path: String) {
        self.memory = memory
        self.path = path
    }

    package static let maxNameBytes = Int(PMLL_NAME_MAX) - "pmll:queue/".utf8.count

    package static func validate(name: String) throws(PMLLError) {
        let bytes = name.utf8.count
        guard bytes > 0 else { throw .invalidQueueName(name: name, reason: "empty") }
        guard bytes <= maxNameBytes else { throw .invalidQueueName(name: String(name.prefix(40)) + "…", reason: "\(bytes) bytes; the limit is \(maxNameBytes)") }
        guard !name.utf8.contains(0) else { throw .invalidQueueName(name: name, reason: "contains NUL") }
    }

    package static func checksum(_ q: UnsafeMutablePointer<pmll_queue_head_t>) -> UInt32 {
        var fields = [q.pointee.flags, q.pointee.submit_lock, q.pointee.name_length]
        let head = fields.withUnsafeMutableBytes { pmll_crc32c(0, $0.baseAddress, $0.count) }
        // A corrupted length must not make the checksum read past the name field.
        return withUnsafeBytes(of: q.pointee.name) { pmll_crc32c(head, $0.baseAddress, min(Int(q.pointee.name_length), $0.count)) }
    }

    /// The intact queues and the indexes of heads that fail their checksum (for `status`,
    /// which shows what it can and names the rest instead of hiding every queue).
    package func readable() -> (intact: [(index: UInt32, head: UnsafeMutablePointer<pmll_queue_head_t>)], damaged: [UInt32]) {
        var intact: [(UInt32, UnsafeMutablePointer<pmll_queue_head_t>)] = [], damaged: [UInt32] = []
        for index in memory.queueIndexes {
            let q = memory.queue(index)
            let state = pmll_load32(&q.pointee.state)
            if state == PMLL_ENTRY_EMPTY { continue }
            if state == PMLL_ENTRY_READY, q.pointee.name_length <= UInt32(Self.maxNameBytes), Self.checksum(q) == q.pointee.checksum {
                intact.append((index, q))
            } else {
                damaged.append(index)
            }
        }
        return (intact, damaged)
    }

    /// Every READY queue with its index; a damaged head is an error.
    package func all() throws(PMLLError) -> [(index: UInt32, head: UnsafeMutablePointer<pmll_queue_head_t>)] {
        let (intact, damaged) = readable()
        if let index = damaged.first { throw .corruptPool(path: path, reason: "queue head \(index) fails its checksum") }
        return intact
    }

    package func find(_ name: String) throws(PMLLError) -> UInt32? {
        let bytes = Array(name.utf8)
        for (index, q) in try all() where q.pointee.name_length == UInt32(bytes.count) {
            if withUnsafeBytes(of: q.pointee.name, { $0.prefix(bytes.count).elementsEqual(bytes) }) { return index }
        }
        return nil
    }

    /// Creates the head (the caller holds the TABLE lock and has created the submit lock);
    /// nil when every table this process knows is full (the caller grows the table).
    package func insert(_ name: String, persistent: Bool, submitLock: LockIndex) throws(PMLLError) -> UInt32? {
        for index in memory.queueIndexes {
            let q = memory.queue(index)
            guard pmll_load32(&q.pointee.state) == PMLL_ENTRY_EMPTY else { continue }
            // An EMPTY head may hold a torn creation: clear it whole, counters included.
            UnsafeMutableRawPointer(q).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<pmll_queue_head_t>.size)
            q.pointee.flags = persistent ? PMLL_QUEUE_FLAG_PERSISTENT : 0
            q.pointee.submit_lock = submitLock.rawValue
            q.pointee.name_length = UInt32(name.utf8.count)
            withUnsafeMutableBytes(of: &q.pointee.name) { $0.copyBytes(from: Array(name.utf8)) }
            q.pointee.checksum = Self.checksum(q)
            try memory.persistence.persist(UnsafeRawPointer(q), MemoryLayout<pmll_queue_head_t>.size, site: "queue.head")
            pmll_store32(&q.pointee.state, PMLL_ENTRY_READY)
            try memory.persistence.persist(UnsafeRawPointer(q), 4, site: "queue.head")
            return index
        }
        return nil
    }
}
