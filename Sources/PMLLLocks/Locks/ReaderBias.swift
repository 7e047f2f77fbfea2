import CPMLL
#if canImport(Glibc)
import Glibc
#endif
package import PMLLCore

/// Reader bias for a lock that many processes hold shared at once and rarely exclusively
/// (the store lock: every commit that runs in parallel and every point read beside them).
/// After BRAVO (Dice and Kogan, "BRAVO: Biased Locking for Reader-Writer Locks", USENIX ATC
/// 2019), with the process ledgers as the table of visible readers.
///
/// A counted shared hold adds to and subtracts from `readers`, one cache line that every
/// holder writes: with four processes committing on two cores that line moved between the
/// cores several times per transaction, and commits on a pool shared by four processes scaled
/// 1.48–1.56× where four pools, one per process, scaled 1.88–2.13× (Docs/Benchmarks.md).
/// While the lock is biased (`PMLL_READERS_BIASED` in `readers`), a reader only enters its
/// own process's ledger (its own cache line), then checks that the word is free and the bias
/// still on; it never writes the lock's entry.
///
/// A writer that takes the word and finds the bias on turns it off and waits until no live
/// process has the lock in its ledger (the counted holders are there too), then keeps the
/// bias off for nine times as long as one scan of the process table took (at least 100 µs),
/// so that inserts and other exclusive commits among parallel ones pay for scans rarely. A counted
/// holder turns the bias back on once that time has passed.
///
/// Why a reader and a writer cannot both go in: the reader's ledger entry comes before its
/// loads of the word and the bias (a full fence between); the writer's word CAS comes before
/// its load of the bias, its revocation before its scan of the ledgers. If the reader loaded
/// before the writer's CAS, the writer's scan finds its entry; otherwise the reader sees the
/// word owned (or the bias off) and leaves. A writer that found the bias off needs no scan:
/// a biased reader that got in before its CAS saw the bias on, so a writer that turned it off
/// since held the word after that reader's entry, and scanned it.
extension Pool {
    /// A shared hold that is either biased (only the ledger word) or counted.
    package struct BiasedShared {
        package let held: SharedTaken
        package let biased: Bool
    }

    /// Shared, biased if the lock is, counted (and turning the bias on when it may) if not.
    package func acquireSharedBiased(index: LockIndex, deadline: Int64) throws(PMLLError) -> BiasedShared {
        let entry = memory.lock(index)
        if pmll_load64(pmll_entry_readers(entry)) & PMLL_READERS_BIASED != 0 {
            try checkLockAccess(index, shared: true)
            let slot = memory.slot(self.slot)
            if let ledger = ReaderLedger.enter(slot, lock: index) {
                let w = pmll_bias_admits(entry)
                if w != UInt32.max && w & PMLL_OWNER_MASK == 0 {
                    let taken = Taken(entry: entry, ownerDied: w & PMLL_WORD_DIED != 0, waitedNanoseconds: 0)
                    return BiasedShared(held: SharedTaken(taken: taken, ledger: ledger), biased: true)
                }
                ReaderLedger.leave(slot, word: ledger)
            }
        }
        let held = try acquireShared(index: index, deadline: deadline, cancellation: nil)
        enableReaderBias(entry)
        return BiasedShared(held: held, biased: false)
    }

    package func releaseSharedBiased(_ hold: BiasedShared) {
        if hold.biased {
            ReaderLedger.leave(memory.slot(slot), word: hold.held.ledger)
        } else {
            releaseShared(hold.held)
        }
    }

    /// By a counted holder: the bias back on once the last revocation's inhibition passed.
    private func enableReaderBias(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) {
        let readers = pmll_entry_readers(entry)
        var v = pmll_load64(readers)
        guard v & PMLL_READERS_BIASED == 0,
              Clock.monotonicNanoseconds >= Int64(bitPattern: pmll_load64(&entry.pointee.bias_inhibit_until)) else { return }
        _ = pmll_cas64(readers, &v, v | PMLL_READERS_BIASED)
    }

    /// By the holder of the word: bias off, then every live process's ledger holds of the
    /// lock gone (or the word released and the error thrown at the deadline).
    package func revokeReaderBias(index: LockIndex, deadline: Int64, cancellation: Cancellation?) throws(PMLLError) {
        let entry = memory.lock(index)
        guard pmll_and64(pmll_entry_readers(entry), ~PMLL_READERS_BIASED) & PMLL_READERS_BIASED != 0 else { return }
        pmll_fence()
        var pause: UInt32 = 10
        let start = Clock.monotonicNanoseconds
        var holds = processes.readers(of: index).holds
        // The cost of a revocation is a scan of the process table (waiting for the holders
        // is not: a commit that waits for a long one would keep the bias off for nine times
        // as long).
        let scan = Clock.monotonicNanoseconds - start
        while holds > 0 {
            let cancelled = cancellation?.isCancelled ?? false
            if cancelled || Clock.monotonicNanoseconds >= deadline {
                release(index: index)
                let name = String(fixedCString: entry.pointee.name)
                if cancelled { throw .cancelled(lock: name) }
                let reader = processes.readers(of: index).readers.first
                throw .timeout(lock: name, holder: reader.map { HolderInfo(pid: $0.pid, commandName: $0.commandName, heldSinceNanoseconds: 0, shared: true) })
            }
            // Biased readers leave without waking anyone: look again shortly.
            usleep(pause)
            pause = min(pause * 2, 1000)
            holds = processes.readers(of: index).holds
        }
        pmll_store64(&entry.pointee.bias_inhibit_until, UInt64(Clock.monotonicNanoseconds + max(9 * scan, 100_000)))
    }
}
