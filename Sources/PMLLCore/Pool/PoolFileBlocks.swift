import CPMLL
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Which parts of a pool file must have their blocks allocated before it is mapped writable:
/// all of it but the free growth areas, whose blocks the store gives back to the file system
/// (Docs/PoolFormat.md "Growth"). A write through the mapping into a hole would meet a full
/// file system as SIGBUS, so a sparse copy of a pool (`cp --sparse=always`) gets its holes
/// allocated when it is opened; the free areas stay holes, because nothing writes there until
/// a growth reserves the area again.
enum PoolFileBlocks {
    /// Allocates the holes outside the free areas. 0 if there were none, 1 if some were
    /// allocated, or -errno (-ENOSPC: no room).
    static func fillHoles(_ fd: FileDescriptor, fileSize: Int, heapStart: Int) -> Int32 {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return -errno }
        // Allocated blocks, not SEEK_HOLE: ext4 reports preallocated (unwritten) extents as holes.
        if Int(st.st_blocks) * 512 >= fileSize { return 0 }   // no hole at all: the directory is not read
        let free = freeAreas(fd, heapStart: heapStart, fileSize: fileSize)
        let needed = fileSize - free.reduce(0) { $0 + $1.count }
        guard Int(st.st_blocks) * 512 < needed else { return 0 }
        var at = 0
        for area in free + [fileSize..<fileSize] {
            if area.lowerBound > at {
                let rc = pmll_fill_range(fd.rawValue, UInt64(at), UInt64(area.lowerBound - at))
                if rc != 0 { return rc }
            }
            at = max(at, area.upperBound)
        }
        var after = stat()
        guard fstat(fd.rawValue, &after) == 0 else { return -errno }
        return after.st_blocks > st.st_blocks ? 1 : 0
    }

    /// The free areas of an intact growth directory read from the file (sorted, inside it);
    /// none if the pool never grew or the directory cannot be read whole (a growth in another
    /// process may be changing it: then everything is allocated, which is only wasteful).
    static func freeAreas(_ fd: FileDescriptor, heapStart: Int, fileSize: Int) -> [Range<Int>] {
        var directory = pmll_growth_t()
        let size = MemoryLayout<pmll_growth_t>.size
        let at = Int64(heapStart + Int(PMLL_GROWTH_OFFSET))
        guard let n = try? withUnsafeMutableBytes(of: &directory, { try fd.read(fromAbsoluteOffset: at, into: $0) }), n == size,
              GrowthDirectory.intact(directory) else { return [] }
        let areas = withUnsafePointer(to: &directory) { GrowthDirectory.areas($0) }
        return areas.filter { $0.kind == PMLL_AREA_FREE }
            .map { Int($0.offset)..<Int($0.offset + $0.size) }
            .filter { $0.lowerBound >= heapStart && $0.upperBound <= fileSize }
            .sorted { $0.lowerBound < $1.lowerBound }
    }
}
