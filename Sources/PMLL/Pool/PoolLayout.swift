import CPMLL

/// Where each table lives in the file: header page, process table, lock table, heap.
/// Every section starts on a page boundary.
struct PoolLayout: Equatable {
    static let page = 4096
    let processCapacity: Int
    let lockCapacity: Int
    let processTable: Range<Int>
    let lockTable: Range<Int>
    let heap: Range<Int>

    init(processCapacity: Int, lockCapacity: Int, size: Int) {
        self.processCapacity = processCapacity
        self.lockCapacity = lockCapacity
        let processStart = Int(PMLL_HEADER_SIZE)
        let processEnd = processStart + Self.roundUp(processCapacity * MemoryLayout<pmll_process_slot_t>.size)
        let lockEnd = processEnd + Self.roundUp(lockCapacity * MemoryLayout<pmll_lock_entry_t>.size)
        processTable = processStart..<processEnd
        lockTable = processEnd..<lockEnd
        heap = lockEnd..<max(lockEnd, size)
    }

    var minimumSize: Int { lockTable.upperBound }

    static func roundUp(_ n: Int) -> Int { (n + page - 1) / page * page }
}
