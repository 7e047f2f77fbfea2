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

    package static func censusChecksum(magic: UInt64, liveKeys: UInt64) -> UInt32 {
        var fields = (magic, liveKeys)
        return withUnsafeBytes(of: &fields) { pmll_crc32c(0, $0.baseAddress, $0.count) }
    }

    /// The census's count if it is maintained and intact; nil if it was never kept (an older
    /// pool); throws nothing: a damaged census is `check`'s to report (``censusIsDamaged``).
    package var censusCount: UInt64? {
        let c = census.pointee
        guard c.magic == PMLL_CENSUS_MAGIC, c.checksum == Self.censusChecksum(magic: c.magic, liveKeys: c.live_keys) else { return nil }
        return c.live_keys
    }

    package var censusIsDamaged: Bool {
        let c = census.pointee
        return c.magic != 0 && (c.magic != PMLL_CENSUS_MAGIC || c.checksum != Self.censusChecksum(magic: c.magic, liveKeys: c.live_keys))
    }

    /// The census bytes for `liveKeys`.
    package static func censusBytes(_ liveKeys: UInt64) -> pmll_store_census_t {
        pmll_store_census_t(magic: PMLL_CENSUS_MAGIC, live_keys: liveKeys, checksum: censusChecksum(magic: PMLL_CENSUS_MAGIC, liveKeys: liveKeys), reserved: 0, reserved2: 0)
    }

    package func countUsedSlots() -> UInt64 {
        var n: UInt64 = 0
        let view = self.view
        for i in 0..<view.capacity where view.slot(i).pointee.state == PMLL_KEY_USED { n += 1 }
        return n
    }
}
