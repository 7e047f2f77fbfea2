package import CPMLL
public import PMLLCore

/// Store-wide sequence numbers and statistics, summed over the undo-log headers (each
/// commit or rollback moves exactly one log's `done_seq` on by one, under the store lock).
extension StateStore {
    /// One more for every commit and every rollback ever made in this pool. A commit gives
    /// each key it writes the sequence it is about to complete as its version, so versions
    /// are unique per write, and an unchanged sum means nothing was committed in between.
    /// Pools written before versions meant this hold per-key counts, which are never above
    /// the sum (each of those writes was a commit), so a new version never repeats one.
    package var commitSequence: UInt64 {
        var sum: UInt64 = 0
        for i in 0..<layout.logSlots { sum &+= pmll_load64_acquire(&logHeader(i).pointee.done_seq) }
        return sum
    }

    /// Moves on whenever a commit inserts or removes a key: an unchanged sum means every
    /// key list taken since is still exact.
    package var keysetChanges: UInt64 {
        var sum: UInt64 = 0
        for i in 0..<layout.logSlots { sum &+= pmll_load64(&logHeader(i).pointee.keyset_changes) }
        return sum
    }

    package func statistics() -> TransactionStatistics {
        var commits: UInt64 = 0, conflicts: UInt64 = 0, retries: UInt64 = 0
        for i in 0..<layout.logSlots {
            let h = logHeader(i)
            commits &+= pmll_load64(&h.pointee.commits)
            conflicts &+= pmll_load64(&h.pointee.conflicts)
            retries &+= pmll_load64(&h.pointee.retries)
        }
        // Every commit, growth and rollback completes one log sequence number.
        let sequence = commitSequence, done = commits &+ UInt64(view.growths)
        return TransactionStatistics(commits: commits, conflicts: conflicts, retries: retries,
                                     rollbacks: sequence >= done ? sequence - done : 0)
    }
}

extension Pool {
    /// This process's undo log (shared with the processes whose slots have the same
    /// remainder; commits serialise on the store lock).
    package func ownLogHeader(_ store: StateStore) -> UnsafeMutablePointer<pmll_log_header_t> {
        store.logHeader(Int(slot.rawValue) % store.layout.logSlots)
    }

    /// Store-wide transaction counters.
    public func transactionStatistics() throws(PMLLError) -> TransactionStatistics {
        try stateStore().statistics()
    }
}
