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
        let widths = header.indices.map { c in rows.map { $0[c].count }.max() ?? 0 }
        return rows.map { row in
            String(zip(row, widths).map { $0.padded(to: $1) }.joined(separator: "  ").trimmingBlanks)
        }.joined(separator: "\n")
    }
}
