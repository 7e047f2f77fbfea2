import FoundationEssentials

/// The one JSON set-up of every `--json` output (a stable contract: Docs/CLI.md): pretty,
/// sorted keys, slashes unescaped.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// The one table renderer of the human outputs: left-aligned columns two spaces apart, the
/// first row the header.
enum TableText {
    static func render(_ rows: [[String]]) -> String {
        guard let header = rows.first else { return "" }
        let rows = rows.map { $0.map(visible) }
        let widths = header.indices.map { c in rows.map { $0[c].count }.max() ?? 0 }
        return rows.map { row in
            String(zip(row, widths).map { $0.padded(to: $1) }.joined(separator: "  ").trimmingBlanks)
        }.joined(separator: "\n")
    }
}

/// `text` with control characters shown as `\xHH`: a lock or queue name is any UTF-8, and an
/// escape sequence in one must not reach the terminal of whoever runs `pmll status`.
func visible(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: isControl) else { return text }
    var out = ""
    for scalar in text.unicodeScalars {
        if isControl(scalar) {
            let hex = String(scalar.value, radix: 16)
            out += "\\x" + (hex.count < 2 ? "0" + hex : hex)
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out
}

private func isControl(_ scalar: Unicode.Scalar) -> Bool {
    scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
}
