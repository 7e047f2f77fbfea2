import CPMLL

/// How this process maps pool files (`$PMLL_MAP`, read once): libpmem on DAX file systems only
/// (`auto`, the default: libpmem is loaded only there), through libpmem always (`libpmem`,
/// for tests of that path on ordinary files), or never (`mmap`).
package enum Mapping {
    private static let mode: Result<Int32, PMLLError> = {
        switch Knob.mapping.value ?? "auto" {
        case "", "auto": .success(PMLL_MAP_AUTO)
        case "libpmem": .success(PMLL_MAP_LIBPMEM)
        case "mmap": .success(PMLL_MAP_MMAP)
        case let other: .failure(.invalidOptions(reason: "PMLL_MAP must be auto, libpmem or mmap, got '\(other)'"))
        }
    }()

    /// Called before any pool is mapped.
    package static func configure() throws(PMLLError) {
        let mode = try Self.mode.get()
        pmll_pmem_set_mapping(mode)
    }
}
