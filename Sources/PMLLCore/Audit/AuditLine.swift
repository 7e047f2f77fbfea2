import CPMLL

/// The text of the audit files: one JSON object per line, fields in a fixed order. A record
/// line ends with `,"hash":"…"}`, and its hash is BLAKE2b-256 over the previous record's hash
/// followed by the exact bytes before `,"hash":"` (so a verifier never re-encodes anything).
/// The first line of each file is its header, which names the record before the file.
package enum AuditLine {
    package static let hashMarker = Array(#","hash":""#.utf8)
    package static let zeroHash = [UInt8](repeating: 0, count: 32)

    package struct Fields {
        package var seq: UInt64
        package var timeNanoseconds: Int64
        package var pid: Int32
        package var uid: UInt32
        package var command: String
        package var event: String
        package var object: String
        package var outcome: String
        package init(seq: UInt64, timeNanoseconds: Int64, pid: Int32, uid: UInt32, command: String, event: String, object: String, outcome: String) {
            self.seq = seq
            self.timeNanoseconds = timeNanoseconds
            self.pid = pid
            self.uid = uid
            self.command = command
            self.event = event
            self.object = object
            self.outcome = outcome
        }
    }

    /// The hashed part of a record line.
    package static func body(_ f: Fields) -> [UInt8] {
        var s = #"{"seq":"# + String(f.seq) + #","time_ns":"# + String(f.timeNanoseconds) + #","pid":"# + String(f.pid)
        s += #","uid":"# + String(f.uid) + #","command":"# + quoted(f.command) + #","event":"# + quoted(f.event)
        s += #","object":"# + quoted(f.object) + #","outcome":"# + quoted(f.outcome)
        return Array(s.utf8)
    }

    /// `,"hash":"HEX"}` and a newline (the end of a record line).
    package static func hashTail(_ hash: [UInt8]) -> [UInt8] {
        var tail = [UInt8](repeating: 0, count: hashMarker.count + 2 * Int(PMLL_AUDIT_HASH_SIZE) + 3)   // + `"}` and a newline
        tail.withUnsafeMutableBytes { t in
            hash.withUnsafeBufferPointer { _ = pmll_audit_hash_tail(t.baseAddress!.assumingMemoryBound(to: CChar.self), $0.baseAddress!) }
        }
        return tail
    }

    /// The header line of file `index`, whose first record follows `previousSeq`.
    package static func fileHeader(index: UInt64, previousSeq: UInt64, previousHash: [UInt8], pool: String) -> [UInt8] {
        Array((#"{"file":"# + String(index) + #","previous_seq":"# + String(previousSeq) + #","previous_hash":""# + hex(previousHash)
               + #"","pool":"# + quoted(pool) + "}\n").utf8)
    }

    package static func fileName(_ index: UInt64) -> String {
        let digits = String(index)
        return String(repeating: "0", count: max(0, 6 - digits.count)) + digits + ".log"
    }

    /// The directory of a pool's audit files.
    package static func directory(ofPool path: String) -> String { path + ".audit" }

    package static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let h = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    package static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    package static func unhex(_ text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            default: nil
            }
        }
        var out = [UInt8]()
        var i = 0
        while i < utf8.count {
            guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    /// The chain hash of a record: BLAKE2b-256(previous ‖ body).
    package static func chain(previous: [UInt8], body: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        _ = out.withUnsafeMutableBufferPointer { o in
            previous.withUnsafeBufferPointer { p in
                body.withUnsafeBufferPointer { b in pmll_audit_chain(o.baseAddress!, p.baseAddress!, b.baseAddress!, UInt64(b.count)) }
            }
        }
        return out
    }

    /// Where `needle` first occurs in `hay` (an index of `hay`), or nil.
    package static func find(_ needle: [UInt8], in hay: ArraySlice<UInt8>, last: Bool = false) -> Int? {
        guard needle.count <= hay.count, !needle.isEmpty else { return nil }
        let starts = hay.startIndex...(hay.endIndex - needle.count)
        for i in (last ? Array(starts.reversed()) : Array(starts)) where hay[i] == needle[0] {
            if hay[i..<i + needle.count].elementsEqual(needle) { return i }
        }
        return nil
    }

    /// The integer after `"name":` in a line, if any.
    package static func integer(_ name: String, in line: ArraySlice<UInt8>) -> Int64? {
        guard let at = find(Array(("\"" + name + "\":").utf8), in: line) else { return nil }
        let start = at + name.utf8.count + 3
        let digits = line[start...].prefix { $0 == 45 || (48...57).contains($0) }
        return Int64(String(decoding: digits, as: UTF8.self))
    }

    /// The string after `"name":"` in a line, up to the next quote (for hashes and names).
    package static func plainString(_ name: String, in line: ArraySlice<UInt8>) -> String? {
        guard let at = find(Array(("\"" + name + "\":\"").utf8), in: line) else { return nil }
        let start = at + name.utf8.count + 4
        return String(decoding: line[start...].prefix { $0 != 34 }, as: UTF8.self)
    }
}
