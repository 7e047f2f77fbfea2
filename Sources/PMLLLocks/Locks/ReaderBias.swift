public import CPMLL
public import PMLLCore

/// Reader bias, for every lock: while `PMLL_READERS_BIASED` is set in `readers`, a shared
/// holder only enters its own process's ledger (its own cache line) and checks that the word
/// is free and the bias still on; it never writes the lock's entry. After BRAVO (Dice and
/// Kogan, "BRAVO: Biased Locking for Reader-Writer Locks", USENIX ATC 2019), with the process
/// ledgers as the table of visible readers.
///
/// A counted hold adds to and subtracts from `readers`, one cache line that every holder
/// writes: two locked instructions more than the rwlock's read side when nobody else is there
/// (2.05× glibc's rwlock, Docs/Benchmarks.md), and with several processes that line moves
/// between the cores on every hold (commits on a pool shared by four processes scaled 1.5×
/// where four pools scaled 1.9–2.1×).
///
/// A writer that takes the word and finds the bias on waits until no live process has the
/// lock in its ledger (the counted holders are there too; ``ReaderDrain``), turns it off,
/// and keeps it off for nine times as long as one scan of the process table took (at
/// least 100 µs; `PMLL_READERS_INHIBITED` says so), so that exclusive holds among shared ones
/// pay for scans rarely. A counted holder turns the bias on: at once if no revocation
/// inhibits it, else once that time has passed (every 16th counted acquisition reads the clock).
///
/// Why a reader and a writer cannot both go in (Docs/LockProtocol.md has the whole argument):
/// the reader's ledger CAS comes before its loads of the word and then `readers` (all
/// sequentially consistent); the writer's word CAS comes before its loads of `readers` and
/// its scan of the ledgers. A reader that found the word free got in before any later
/// writer's CAS, and such a writer sees the bias on, at its first look or, if a counted holder
/// turned it on afterwards, when the count drains (``ReaderDrain``), and scans the ledgers.
/// The bias goes off only once the ledgers are empty: a writer that gives up (timeout,
/// cancellation) or dies before that leaves it on, since biased holders may still be in.
package enum ReaderBias {
    /// A counted acquisition whose number has these bits clear looks whether to turn the bias on.
    package static let enableEvery: UInt64 = 15
    /// The bias stays off at least this long after a revocation.
    static let minimumInhibition: Int64 = 100_000
}

extension Pool {
    /// By a counted holder: the bias back on once the last revocation's inhibition passed.
    @usableFromInline @inline(never)
    package func enableReaderBias(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) {
        // A pause point only (not in CrashPoint.all: a kill here is a reader killed holding,
        // which the shared-lock kill tests cover). A writer may take the word meanwhile.
        CrashPoint.hit("lock.bias-enabling")
        let readers = pmll_entry_readers(entry)
        var v = pmll_load64(readers)
        guard v & PMLL_READERS_BIASED == 0 else { return }
        if v & PMLL_READERS_INHIBITED != 0 {
            guard Clock.monotonicNanoseconds >= Int64(bitPattern: pmll_load64(&entry.pointee.bias_inhibit_until)) else { return }
        }
        if pmll_cas64(readers, &v, (v | PMLL_READERS_BIASED) & ~PMLL_READERS_INHIBITED) != 0 { pmll_bias_hint(entry, 1) }
    }

    /// By the holder of the word: true if the bias is on, so that the drain waits for the
    /// ledgers, not just the count. The bias stays on until the drain is done (``ReaderDrain``):
    /// with the word owned no biased holder can come in, and a writer that dies or gives up
    /// while biased holders remain leaves it on, so the next writer looks for them too.
    package func readerBiasIsOn(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> Bool {
        guard pmll_lock_biased(entry) != 0 else { return false }
        pmll_fence()
        return true
    }

    /// Shared holds that dead processes left in their ledgers, retired and counted as reader
    /// deaths (once: see ``LockDeath/countReaderDeaths(_:_:)``).
    package func retireDeadReaders(_ dead: [OwnerToken], lock: UnsafeMutablePointer<pmll_lock_entry_t>) {
        for token in dead {
            guard let held = processes.retireLedger(of: token) else { continue }
            LockDeath.countReaderDeaths(memory, held)
            let pid = memory.slot(token.slot).pointee.pid
            let total = held.reduce(0) { $0 + $1.holds }
            audit(.readerDeath, .ok, "lock '\(String(fixedCString: lock.pointee.name))': \(total) shared hold(s) of dead reader pid \(pid) retired")
        }
    }
}
