import CPMLL
import Foundation
import Testing

/// Rewrites the pool's header through `edit`, with a valid checksum.
func editHeader(_ path: String, _ edit: (UnsafeMutablePointer<pmll_header_t>) -> Void) throws {
    var bytes = try #require(FileManager.default.contents(atPath: path))
    bytes.withUnsafeMutableBytes { raw in
        let header = raw.baseAddress!.assumingMemoryBound(to: pmll_header_t.self)
        edit(header)
        header.pointee.header_checksum = UInt64(pmll_crc32c(0, header, Int(PMLL_HEADER_CHECKED_BYTES)))
    }
    try bytes.write(to: URL(fileURLWithPath: path))
}

/// Runs `body` and expects the file's bytes to be what they were before it.
func expectUntouched(_ path: String, _ body: () throws -> Void) rethrows {
    let before = FileManager.default.contents(atPath: path)
    try body()
    #expect(FileManager.default.contents(atPath: path) == before, "file was modified")
}
