/// The JSON of configuration files, read with the line of every value, so that an error names
/// the line as well as the key. Strict JSON (RFC 8259) plus two refusals JSONDecoder does not
/// make: a key given twice, and integers that do not fit 64 bits. (FoundationEssentials'
/// JSONDecoder reports neither lines nor duplicate keys; swift-configuration and Yams would
/// bring Foundation's internationalisation back into the `pmll` executable.)
enum ConfigJSON: Equatable {
    case object([(key: String, line: Int, value: ConfigJSON)])
    case array([ConfigJSON])
    case string(String)
    case integer(Int64)
    case number(Double)
    case bool(Bool)
    case null

    static func == (a: ConfigJSON, b: ConfigJSON) -> Bool {
        switch (a, b) {
        case let (.object(x), .object(y)): x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        case let (.array(x), .array(y)): x == y
        case let (.string(x), .string(y)): x == y
        case let (.integer(x), .integer(y)): x == y
        case let (.number(x), .number(y)): x == y
        case let (.bool(x), .bool(y)): x == y
        case (.null, .null): true
        default: false
        }
    }

    var kind: String {
        switch self {
        case .object: "an object"
        case .array: "an array"
        case .string: "a string"
        case .integer, .number: "a number"
        case .bool: "true or false"
        case .null: "null"
        }
    }

    struct SyntaxError: Error {
        let line: Int
        let message: String
    }

    static func parse(_ text: [UInt8]) throws(SyntaxError) -> ConfigJSON {
        var reader = Reader(bytes: text)
        reader.skipSpace()
        let value = try reader.value()
        reader.skipSpace()
        guard reader.index == text.count else { throw reader.error("unexpected text after the end of the document") }
        return value
    }

    private struct Reader {
        let bytes: [UInt8]
        var index = 0
        var line = 1

        func error(_ message: String) -> SyntaxError { SyntaxError(line: line, message: message) }

        mutating func skipSpace() {
            while index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: "\n"): line += 1
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"): break
                default: return
                }
                index += 1
            }
        }

        mutating func expect(_ byte: UInt8, _ what: String) throws(SyntaxError) {
            guard index < bytes.count, bytes[index] == byte else { throw error("expected \(what)") }
            index += 1
        }

        mutating func value() throws(SyntaxError) -> ConfigJSON {
            guard index < bytes.count else { throw error("unexpected end of the document") }
            switch bytes[index] {
            case UInt8(ascii: "{"): return try object()
            case UInt8(ascii: "["): return try array()
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
            default: throw error("unexpected character '\(Character(Unicode.Scalar(bytes[index])))'")
            }
        }

        mutating func literal(_ word: String) throws(SyntaxError) {
            let w = Array(word.utf8)
            guard index + w.count <= bytes.count, Array(bytes[index..<index + w.count]) == w else { throw error("expected \(word)") }
            index += w.count
        }

        mutating func object() throws(SyntaxError) -> ConfigJSON {
            index += 1
            var members: [(key: String, line: Int, value: ConfigJSON)] = []
            skipSpace()
            if index < bytes.count && bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            while true {
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a key in double quotes") }
                let keyLine = line
                let key = try string()
                if members.contains(where: { $0.key == key }) { throw SyntaxError(line: keyLine, message: "key '\(key)' is given twice") }
                skipSpace()
                try expect(UInt8(ascii: ":"), "':' after key '\(key)'")
                skipSpace()
                members.append((key, keyLine, try value()))
                skipSpace()
                guard index < bytes.count else { throw error("unexpected end of the document inside an object") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                try expect(UInt8(ascii: "}"), "',' or '}'")
                return .object(members)
            }
        }

        mutating func array() throws(SyntaxError) -> ConfigJSON {
            index += 1
            var items: [ConfigJSON] = []
            skipSpace()
            if index < bytes.count && bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            while true {
                skipSpace()
                items.append(try value())
                skipSpace()
                guard index < bytes.count else { throw error("unexpected end of the document inside an array") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                try expect(UInt8(ascii: "]"), "',' or ']'")
                return .array(items)
            }
        }

        mutating func string() throws(SyntaxError) -> String {
            index += 1
            var out: [UInt8] = []
            while index < bytes.count {
                let b = bytes[index]
                index += 1
                switch b {
                case UInt8(ascii: "\""):
                    guard let s = String(validating: out, as: UTF8.self) else { throw error("a string is not valid UTF-8") }
                    return s
                case UInt8(ascii: "\\"):
                    guard index < bytes.count else { break }
                    let e = bytes[index]
                    index += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "n"): out.append(10)
                    case UInt8(ascii: "t"): out.append(9)
                    case UInt8(ascii: "r"): out.append(13)
                    case UInt8(ascii: "b"): out.append(8)
                    case UInt8(ascii: "f"): out.append(12)
                    case UInt8(ascii: "u"):
                        guard index + 4 <= bytes.count, let code = UInt32(String(decoding: bytes[index..<index + 4], as: UTF8.self), radix: 16),
                              let scalar = Unicode.Scalar(code) else { throw error("bad \\u escape (surrogate pairs are not supported)") }
                        index += 4
                        out += Array(String(Character(scalar)).utf8)
                    default: throw error("bad escape '\\\(Character(Unicode.Scalar(e)))'")
                    }
                case 0..<0x20: throw error("a control character inside a string (a string cannot span lines)")
                default: out.append(b)
                }
            }
            throw error("a string is not closed")
        }

        mutating func number() throws(SyntaxError) -> ConfigJSON {
            let start = index
            if bytes[index] == UInt8(ascii: "-") { index += 1 }
            var integral = true
            while index < bytes.count {
                let b = bytes[index]
                if b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") { index += 1; continue }
                if b == UInt8(ascii: ".") || b == UInt8(ascii: "e") || b == UInt8(ascii: "E") || b == UInt8(ascii: "+") || b == UInt8(ascii: "-") {
                    integral = false
                    index += 1
                    continue
                }
                break
            }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            if integral {
                guard let v = Int64(text) else { throw error("number \(text) does not fit 64 bits") }
                return .integer(v)
            }
            guard let d = Double(text), d.isFinite else { throw error("bad number \(text)") }
            return .number(d)
        }
    }
}
