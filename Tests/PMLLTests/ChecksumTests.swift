import CPMLL
import Testing

@Suite("Checksums")
struct ChecksumTests {
    @Test func crc32cMatchesTheStandardCheckValueInHardwareAndSoftware() {
        let check = Array("123456789".utf8)
        #expect(check.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) } == 0xE306_9283)
        #expect(check.withUnsafeBytes { pmll_crc32c_software(0, $0.baseAddress, $0.count) } == 0xE306_9283)
        for length in [0, 1, 7, 8, 9, 63, 64, 1000] {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let hw = bytes.withUnsafeBytes { pmll_crc32c(0x1234, $0.baseAddress, $0.count) }
            let sw = bytes.withUnsafeBytes { pmll_crc32c_software(0x1234, $0.baseAddress, $0.count) }
            #expect(hw == sw, "length \(length)")
        }
    }
}
