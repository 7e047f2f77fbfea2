import CPMLL
public import PMLLCore
import PMLLLocks
import PMLLStore
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    package static let attentionPrefix = "pmll:batch-attention/"

    /// Rolls back (or finishes cleaning up) the atomic batches of processes that are gone
    /// (only those below `root` if given), and those left ownerless by a rollback that
    /// failed. Runs before every `apply` (for its root), in `recover`, and on an open that
    /// reset the volatile state. Recoverers are serialised by an internal lock.
    ///
    /// A batch whose rollback does not fully succeed keeps its journal and is reported in
    /// `needsAttention` (and recorded, for `check`) until a later recovery succeeds.
    ///
    /// `ownersAreGone`: the caller knows every recorded owner is dead (this open reset the
    /// volatile state). Owner tokens must not be trusted then: after a power failure the
    /// process table's generations may have gone back, so a new process can be handed the
    /// very token a dead batch recorded (found by the crash suite's power-failure model).
    public func fileBatchRecovery(ownersAreGone: Bool = false, root: String? = nil) throws(PMLLError) -> FileBatchRecovery {
        var report = FileBatchRecovery()
        guard store.exists else { return report }
        // The census counts journals: with none, there is nothing to read every key for (this
        // runs at every lone open). A commit adding one meanwhile is by a live owner.
        if store.journalCount == 0 { return report }
        let keys = try committedKeys(prefix: Self.batchPrefix, skippingDamaged: true)
        guard !keys.isEmpty else { return report }
        let lock = try batchRecoveryLock()
        _ = try acquire(index: lock, deadline: .max, cancellation: nil)
        defer { release(index: lock) }
        for key in keys {
            let id = String(key.dropFirst(Self.batchPrefix.count))
            guard let bytes = try readCommitted(key) else { continue }   // finished meanwhile
            guard let journal = BatchJournal(decoding: bytes) else {
                let attention = BatchAttention(id: id, root: "?", reason: "its journal is unreadable (\(bytes.count) bytes)")
                try recordAttention(attention)
                report.needsAttention.append(attention)
                continue
            }
            if let root, journal.root != root { continue }
            if !ownersAreGone, let owner = journal.owner, processes.isAlive(owner) { continue }   // still being applied
            let rootFD: FileDescriptor
            do {
                rootFD = try FileDescriptor.open(FilePath(journal.root), .readOnly, options: [.directory, .closeOnExec])
            } catch {
                let attention = BatchAttention(id: id, root: journal.root, reason: "its root cannot be opened: \(Errno(error).description)")
                try recordAttention(attention)
                report.needsAttention.append(attention)
                continue
            }
            let dirs = DirectoryCache(root: rootFD)
            let failures = journal.phase == .committed ? cleanUp(journal, dirs: dirs) : undo(journal, dirs: dirs)
            dirs.closeAll()
            try? rootFD.close()
            guard failures.isEmpty else {
                let what = journal.phase == .committed ? "removing its backups failed" : "rolling it back failed"
                let attention = BatchAttention(id: id, root: journal.root, reason: "\(what): \(failures.map(\.description).joined(separator: "; "))")
                try recordAttention(attention)
                report.needsAttention.append(attention)
                audit(.batchRecover, .failed, "batch \(id) on '\(journal.root)': \(attention.reason)")
                continue
            }
            try internalTransaction { tx throws(PMLLError) in
                try tx.deleteInternal(key)
                try tx.deleteInternal(Self.attentionPrefix + id)
            }
            report.handled += 1
            audit(.batchRecover, .ok, "batch \(id) on '\(journal.root)': \(journal.phase == .committed ? "its backups removed" : "rolled back")")
        }
        return report
    }

    /// ``fileBatchRecovery(ownersAreGone:root:)``, counting the batches handled.
    @discardableResult
    public func recoverFileBatches(ownersAreGone: Bool = false, root: String? = nil) throws(PMLLError) -> Int {
        try fileBatchRecovery(ownersAreGone: ownersAreGone, root: root).handled
    }

    /// Batches whose last rollback or clean-up failed and that no recovery has finished since.
    public func batchesNeedingAttention() throws(PMLLError) -> [BatchAttention] {
        guard store.exists else { return [] }
        var found: [BatchAttention] = []
        for key in try committedKeys(prefix: Self.attentionPrefix, skippingDamaged: true) {
            guard let bytes = try readCommitted(key) else { continue }
            let parts = String(decoding: bytes, as: UTF8.self).split(separator: "\n", maxSplits: 1).map(String.init)
            found.append(BatchAttention(id: String(key.dropFirst(Self.attentionPrefix.count)), root: parts.first ?? "?", reason: parts.count > 1 ? parts[1] : ""))
        }
        return found
    }

    /// Records (or updates) why a batch needs attention: ROOT, newline, REASON.
    package func recordAttention(_ attention: BatchAttention) throws(PMLLError) {
        let value = Array((attention.root + "\n" + attention.reason).utf8.prefix(Int(PMLL_VALUE_MAX)))
        try internalTransaction { tx throws(PMLLError) in try tx.setInternal(Self.attentionPrefix + attention.id, value) }
    }

    /// The lock that serialises batch recoverers (created on first use).
    package func batchRecoveryLock() throws(PMLLError) -> LockIndex {
        try table.index(of: "pmll:batches", level: .network, create: true, creation: tableCreation, allowReserved: true)!
    }
}
