import CPMLL
import Testing

@Suite("Checksums")
struct ChecksumTests {
    @Test func crc32cMatchesTheStandardCheckValueInHardwareAndSoftware() {
        let check = Array("123456789".utf8)
        #expect(check.withUnsafeBytes { pmll_crc32c(0, $0.baseAddress, $0.count) } == 0xE306_9283)
        #expect(check.withUnsafeBytes { pmll_crc32c_software(0, $0.baseAddress, $0.count) } == 0xE306_9283)
        for length in Array(0...17) + [63, 64, 1000] {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let hw = bytes.withUnsafeBytes { pmll_crc32c(0x1234, $0.baseAddress, $0.count) }
            let sw = bytes.withUnsafeBytes { pmll_crc32c_software(0x1234, $0.baseAddress, $0.count) }
            #expect(hw == sw, "length \(length)")
        }
    }

    /// The audit slot's one-call checksum (the drain's, from the slot) and an appender's (from
    /// the fields' values) are the CRC32C of its three pieces (what the docs and pools written
    /// before them say), at every text length and through both tails.
    @Test func theAuditSlotChecksumIsTheCRCOfItsPieces() {
        let slot = UnsafeMutablePointer<pmll_audit_slot_t>.allocate(capacity: 1)
        defer { slot.deallocate() }
        let raw = UnsafeMutableRawPointer(slot)
        for i in 0..<MemoryLayout<pmll_audit_slot_t>.size { raw.storeBytes(of: UInt8(truncatingIfNeeded: i &* 131 &+ 17), toByteOffset: i, as: UInt8.self) }
        let seq: UInt64 = 0x0123_4567_89AB_CDEF
        for length in 0...Int(PMLL_AUDIT_TEXT_MAX) + 3 {
            slot.pointee.text_length = UInt32(length)
            var n = seq
            var crc = withUnsafeBytes(of: &n) { pmll_crc32c_software(0, $0.baseAddress, 8) }
            crc = pmll_crc32c_software(crc, raw + 12, 24)
            crc = pmll_crc32c_software(crc, raw + 40, 16 + min(length, Int(PMLL_AUDIT_TEXT_MAX)))
            #expect(pmll_audit_slot_checksum(slot, seq) == crc, "text length \(length)")
            // An appender's: the same, from the fields' values and the text.
            let s = slot.pointee
            let comm = withUnsafeBytes(of: s.comm) { ($0.loadUnaligned(as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
            let record = withUnsafeBytes(of: s.text) {
                pmll_audit_record_checksum(seq, s.pid, s.uid, s.event, s.outcome, s.time_ns, UInt64(littleEndian: comm.0), UInt64(littleEndian: comm.1),
                                           $0.baseAddress, min(length, Int(PMLL_AUDIT_TEXT_MAX)))
            }
            if length <= Int(PMLL_AUDIT_TEXT_MAX) { #expect(record == crc, "text length \(length), from values") }
        }
    }
}
