import CPMLL

/// Where each table lives in the file: header page, process table, lock table, queue table
/// (heads, then one record ring per queue), audit ring (absent in older pools), heap. Every
/// section starts on a page boundary.
@usableFromInline
package struct PoolLayout: Equatable {
    package static let page = 4096
    package let processCapacity: Int
    @usableFromInline package let lockCapacity: Int
    package let queueCapacity: Int
    package let queueRing: Int
    @usableFromInline package let processTable: Range<Int>
    @usableFromInline package let lockTable: Range<Int>
    package let queueTable: Range<Int>
    /// The audit ring: empty in pools created without one.
    package let auditRing: Range<Int>
    package let heap: Range<Int>
    /// The file may grow to this many bytes (the state store appends areas after `size`).
    package let sizeLimit: Int
    /// Where the first growth area may start: the created file's end, page aligned.
    package var growthStart: Int { Self.roundUp(heap.upperBound) }

    /// `auditBytes`: the audit ring section's size (``auditBytes(slots:)``; 0: none).
    package init(processCapacity: Int, lockCapacity: Int, queueCapacity: Int, queueRing: Int, auditBytes: Int, size: Int, sizeLimit: Int = 0) {
        self.sizeLimit = sizeLimit > 0 ? sizeLimit : Int(PMLL_SIZE_LIMIT_DEFAULT)
        self.processCapacity = processCapacity
        self.lockCapacity = lockCapacity
        self.queueCapacity = queueCapacity
        self.queueRing = queueRing
        let processStart = Int(PMLL_HEADER_SIZE)
        let processEnd = processStart + Self.roundUp(processCapacity * MemoryLayout<pmll_process_slot_t>.size)
        let lockEnd = processEnd + Self.roundUp(lockCapacity * MemoryLayout<pmll_lock_entry_t>.size)
        let queueBytes = queueCapacity * (MemoryLayout<pmll_queue_head_t>.size + queueRing * MemoryLayout<pmll_record_t>.size)
        let queueEnd = lockEnd + Self.roundUp(queueBytes)
        processTable = processStart..<processEnd
        lockTable = processEnd..<lockEnd
        queueTable = lockEnd..<queueEnd
        auditRing = queueEnd..<queueEnd + auditBytes
        heap = auditRing.upperBound..<max(auditRing.upperBound, size)
    }

    package var minimumSize: Int { auditRing.upperBound }

    /// The section size of an audit ring of `slots` slots (0: none).
    package static func auditBytes(slots: Int) -> Int {
        slots == 0 ? 0 : roundUp(MemoryLayout<pmll_audit_ring_t>.size + slots * MemoryLayout<pmll_audit_slot_t>.size)
    }

    /// Offset of queue `q`'s record ring inside the queue table.
    package func ringOffset(queue q: Int) -> Int {
        queueTable.lowerBound + queueCapacity * MemoryLayout<pmll_queue_head_t>.size
            + q * queueRing * MemoryLayout<pmll_record_t>.size
    }

    package static func roundUp(_ n: Int) -> Int { (n + page - 1) / page * page }
}
