package import CPMLL
import PMLLCore

/// The number of live keys, kept beside the index so that a key whose slot was damaged
/// (state flipped to empty, index page zeroed) cannot vanish unnoticed: `check` compares it
/// with the slots it finds. Commits keep it (undo-logged with the slots); pools from before
/// it get it counted by their first commit.
extension StateStore {
    package var census: UnsafeMutablePointer<pmll_store_census_t> {
        (memory.base + layout.index.lowerBound - StoreLayout.superSize + Int(PMLL_CENSUS_OFFSET)).assumingMemoryBound(to: pmll_store_census_t.self)
    }

    package var censusRange: Range<Int> {
        let start = offset(of: census)
        return start..<(start + MemoryLayout<pmll_store_census_t>.size)
    }

    /// Keys under this prefix are file-batch journals (``Pool/journalCount``).
    package static let journalPrefix = "pmll:batch/"
    static let journalPrefixBytes = Array(journalPrefix.utf8)

    private static func intact(_ c: pmll_store_census_t) -> Bool {
        c.magic == PMLL_CENSUS_MAGIC && c.checksum == StoreLayout.censusChecksum(magic: c.magic, liveKeys: c.live_keys, flags: c.flags, journals: c.journal_keys)
    }

    /// The census's count if it is maintained and intact; nil if it was never kept (an older
    /// pool); throws nothing: a damaged census is `check`'s to report (``censusIsDamaged``).
    package var censusCount: UInt64? {
        let c = census.pointee
        return Self.intact(c) ? c.live_keys : nil
    }

    /// File-batch journals in the store, if the census counts them and is intact; nil: unknown
    /// (a pool whose census predates the count, or a damaged one), so look.
    package var journalCount: UInt64? { censusCounts?.journals }

    /// Both counts from one read of the census (one checksum), for the commit path; nil if
    /// the census is not intact.
    package var censusCounts: (keys: UInt64, journals: UInt64?)? {
        let c = census.pointee
        guard Self.intact(c) else { return nil }
        return (c.live_keys, c.flags & PMLL_CENSUS_JOURNALS != 0 ? c.journal_keys : nil)
    }

    package var censusIsDamaged: Bool {
        let c = census.pointee
        return c.magic != 0 && !Self.intact(c)
    }

    /// The census bytes for `liveKeys` and, when known, the journal count.
    package static func censusBytes(_ liveKeys: UInt64, journals: UInt64?) -> pmll_store_census_t {
        StoreLayout.census(liveKeys: liveKeys, journals: journals)
    }

    /// Journal keys found by reading every key (once per pool, by the first commit that keeps
    /// the count; damaged records are `check`'s to report and are not counted).
    package func countJournalKeys() -> UInt64 {
        var n: UInt64 = 0
        let view = self.view
        for i in 0..<view.capacity where view.slot(i).pointee.state == PMLL_KEY_USED {
            if let key = try? key(of: i), key.starts(with: Self.journalPrefixBytes) { n += 1 }
        }
        return n
    }

    package func countUsedSlots() -> UInt64 {
        var n: UInt64 = 0
        let view = self.view
        for i in 0..<view.capacity where view.slot(i).pointee.state == PMLL_KEY_USED { n += 1 }
        return n
    }
}
