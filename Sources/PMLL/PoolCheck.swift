import PMLLCore
import PMLLLocks
import PMLLQueues
import PMLLStore

extension Pool {
    /// Verifies the whole pool, layer by layer: header (checked on open) and process table,
    /// lock entries, queue records, then the state store (under its lock).
    public func check() throws(PMLLError) -> CheckReport {
        var report = CheckReport()
        checkProcessTable(into: &report)
        checkLockEntries(into: &report)
        checkQueueRecords(into: &report)
        try checkStore(into: &report)
        return report
    }
}
