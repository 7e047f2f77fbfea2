import PMLLCore
import PMLLFileBatches
import PMLLLocks
import PMLLQueues
import PMLLStore

extension Pool {
    /// Verifies the whole pool, layer by layer: header (checked on open) and process table,
    /// lock entries, queue records, then the state store (under its lock); and file batches
    /// whose rollback failed.
    public func check() throws(PMLLError) -> CheckReport {
        var report = CheckReport()
        checkProcessTable(into: &report)
        checkLockEntries(into: &report)
        checkQueueRecords(into: &report)
        try checkStore(into: &report)
        for batch in try batchesNeedingAttention() { report.problems.append(batch.description) }
        return report
    }
}
