import CPMLL
package import PMLLCore

extension Pool {
    /// The lock layer's part of ``Pool/check()``: every lock entry's checksum.
    package func checkLockEntries(into report: inout CheckReport) {
        for index in memory.locks {
            let e = memory.lock(index)
            let state = pmll_load32(pmll_entry_state(e))
            if state == PMLL_ENTRY_EMPTY { continue }
            report.locksChecked += 1
            let name = withUnsafeBytes(of: e.pointee.name) { Array($0.prefix(Int(min(e.pointee.name_length, PMLL_NAME_MAX)))) }
            if state != PMLL_ENTRY_READY || e.pointee.entry_checksum != LockTable.checksum(level: e.pointee.level, name: name) {
                report.problems.append("lock entry \(index.rawValue) ('\(String(decoding: name, as: UTF8.self))') fails its checksum")
            }
        }
    }
}
