package import CPMLL

/// The growth directory in the state store's first page (Docs/PoolFormat.md "Growth"): the
/// areas appended to the file. The store layer owns it (it changes only under the store lock,
/// through the undo log); the core reads it too, to find the lock table's extensions.
package enum GrowthDirectory {
    package static func pointer(_ base: UnsafeMutableRawPointer, heapStart: Int) -> UnsafeMutablePointer<pmll_growth_t> {
        (base + heapStart + Int(PMLL_GROWTH_OFFSET)).assumingMemoryBound(to: pmll_growth_t.self)
    }

    package static func checksum(_ g: UnsafePointer<pmll_growth_t>) -> UInt32 {
        let count = min(Int(g.pointee.area_count), Int(PMLL_AREA_MAX))
        let head = MemoryLayout<pmll_growth_t>.offset(of: \pmll_growth_t.checksum)!
        let crc = pmll_crc32c(0, g, head)
        return pmll_crc32c(crc, UnsafeRawPointer(g) + MemoryLayout<pmll_growth_t>.offset(of: \pmll_growth_t.areas)!,
                           count * MemoryLayout<pmll_area_t>.size)
    }

    package static func areas(_ g: UnsafePointer<pmll_growth_t>) -> [pmll_area_t] {
        withUnsafeBytes(of: g.pointee.areas) { raw in
            Array(raw.bindMemory(to: pmll_area_t.self).prefix(min(Int(g.pointee.area_count), Int(PMLL_AREA_MAX))))
        }
    }

    /// The directory copied while other processes may change it: a copy whose generation did
    /// not move while it was taken (nil if it kept moving). Every field a caller uses comes from
    /// this one copy: read field by field from the shared page, a checksum that matched the old
    /// areas could be paired with the new generation, and a view cached that way named areas
    /// the directory no longer had (a growth then placed an area over another's).
    package static func copy(_ base: UnsafeMutableRawPointer, heapStart: Int) -> pmll_growth_t? {
        let g = pointer(base, heapStart: heapStart)
        var copy = pmll_growth_t()
        for _ in 0..<8 {
            let before = pmll_load64_acquire(&g.pointee.generation)
            pmll_fence()
            copy = g.pointee
            pmll_fence()
            if pmll_load64_acquire(&g.pointee.generation) == before { return copy }
        }
        return nil
    }

    /// Whether a copy is a whole directory: its magic, count and checksum agree.
    package static func intact(_ copy: pmll_growth_t) -> Bool {
        var copy = copy
        return copy.magic == PMLL_GROWTH_MAGIC && copy.area_count <= PMLL_AREA_MAX
            && withUnsafePointer(to: &copy) { checksum($0) } == copy.checksum
    }

    /// The areas of an intact directory, copied while other processes may change it (nil if
    /// it stayed torn or is damaged; empty if the pool never grew). What it names may not be committed yet: a
    /// caller checks what it finds in an area before it relies on it.
    package static func snapshot(_ base: UnsafeMutableRawPointer, heapStart: Int) -> [pmll_area_t]? {
        for _ in 0..<8 {
            guard var copy = copy(base, heapStart: heapStart) else { return nil }
            if copy.magic == 0 { return [] }
            if intact(copy) { return withUnsafePointer(to: &copy) { areas($0) } }
        }
        return nil
    }
}
