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
        checkAuditRing(into: &report)
        // A policy that cannot be read refuses every governed operation (it fails closed).
        do { _ = try storedAccessPolicy() } catch { report.problems.append("access policy: \(error)") }
        audit(.check, report.problems.isEmpty ? .ok : .failed,
              report.problems.isEmpty ? "no problems" : "\(report.problems.count) problem(s); first: \(report.problems[0])")
        return report
    }

    /// The audit ring's header (a damaged one disables auditing when the pool is opened).
    private func checkAuditRing(into report: inout CheckReport) {
        guard !memory.layout.auditRing.isEmpty else { return }
        do { _ = try AuditRing(memory: memory, path: path) } catch { report.problems.append("\(error)") }
    }
}
