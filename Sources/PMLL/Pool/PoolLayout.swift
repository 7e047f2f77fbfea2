import CPMLL

/// Where each table lives in the file: header page, process table, lock table, queue table
/// (heads, then one record ring per queue), heap. Every section starts on a page boundary.
struct PoolLayout: Equatable {
    static let page = 4096
    let processCapacity: Int
    let lockCapacity: Int
    let queueCapacity: Int
    let queueRing: Int
    let processTable: Range<Int>
    let lockTable: Range<Int>
    let queueTable: Range<Int>
    let heap: Range<Int>

    init(processCapacity: Int, lockCapacity: Int, queueCapacity: Int, queueRing: Int, size: Int) {
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

    var minimumSize: Int { queueTable.upperBound }

    /// Offset of queue `q`'s record ring inside the queue table.
    func ringOffset(queue q: Int) -> Int {
        queueTable.lowerBound + queueCapacity * MemoryLayout<pmll_queue_head_t>.size
            + q * queueRing * MemoryLayout<pmll_record_t>.size
    }

    static func roundUp(_ n: Int) -> Int { (n + page - 1) / page * page }
}
