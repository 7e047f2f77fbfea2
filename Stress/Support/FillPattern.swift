/// The values `pmll-worker fill` writes and the tests expect: 10...maximum bytes, a pattern
/// of the key, so that any value read back can be checked without a copy of the data.
public enum FillPattern {
    public static func value(prefix: String, index: Int, maximum: Int) -> [UInt8] {
        let seed = seed(prefix: prefix, index: index)
        return value(seed: seed, length: 10 + Int(seed % UInt64(max(1, maximum - 9))))
    }

    /// A value of exactly `length` bytes.
    public static func value(prefix: String, index: Int, length: Int) -> [UInt8] {
        value(seed: seed(prefix: prefix, index: index), length: length)
    }

    static func seed(prefix: String, index: Int) -> UInt64 {
        var seed = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15
        for byte in prefix.utf8 { seed = (seed ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return seed
    }

    static func value(seed: UInt64, length: Int) -> [UInt8] {
        guard length > 0 else { return [] }
        return [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            // Eight bytes at a time: values of many MiB stay quick to make in a debug build.
            let words = length / 8
            let raw = UnsafeMutableRawPointer(buffer.baseAddress!)
            for w in 0..<words { raw.storeBytes(of: seed &+ UInt64(w) &* 0x0101_0101_0101_0101, toByteOffset: w * 8, as: UInt64.self) }
            for i in (words * 8)..<length { buffer[i] = UInt8(truncatingIfNeeded: seed >> 8 &+ UInt64(i)) }
            count = length
        }
    }
}
