import CPMLL

/// Where each table lives in the file: header page, process table, lock table, queue table
/// (heads, then one record ring per queue), heap. Every section starts on a page boundary.
@usableFromInline
package struct PoolLayout: Equatable {
    package static let page = 4096
    package let processCapacity: Int
    package let lockCapacity: Int
    package let queueCapacity: Int
    package let queueRing: Int
    @usableFromInline package let processTable: Range<Int>
    @usableFromInline package let lockTable: Range<Int>
    package let queueTable: Range<Int>
    package let heap: Range<Int>

    package init(processCapacity: Int, lockCapacity: Int, queueCapacity: Int, queueRing: Int, size: Int) {
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
        heap = queueEnd..<max(queueEnd, size)
    }

    package var minimumSize: Int { queueTable.upperBound }

    /// Offset of queue `q`'s record ring inside the queue table.
    package func ringOffset(queue q: Int) -> Int {
        queueTable.lowerBound + queueCapacity * MemoryLayout<pmll_queue_head_t>.size
            + q * queueRing * MemoryLayout<pmll_record_t>.size
    }

    package static func roundUp(_ n: Int) -> Int { (n + page - 1) / page * page }
}
