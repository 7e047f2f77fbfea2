import FoundationEssentials
public import PMLL

/// A JSON value as far as the batch format needs it: objects, strings, and anything else.
enum BatchJSON: Decodable, Sendable {
    case object([String: BatchJSON])
    case string(String)
    case other

    init(from decoder: any Decoder) throws {
        if let object = try? decoder.container(keyedBy: AnyKey.self) {
            var fields: [String: BatchJSON] = [:]
            for key in object.allKeys { fields[key.stringValue] = try object.decode(BatchJSON.self, forKey: key) }
            self = .object(fields)
        } else if let text = try? decoder.singleValueContainer().decode(String.self) {
            self = .string(text)
        } else {
            self = .other
        }
    }

    struct AnyKey: CodingKey {
        let stringValue: String
        init(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }

    var text: String? { if case let .string(s) = self { s } else { nil } }
}

/// The batch file format of `pmll batch apply` (Docs/CLI.md). JSON is the command's concern:
/// the library takes ``FileBatch`` values and never parses JSON.
extension FileBatch {
    /// Decodes the JSON list the CLI takes: objects with "op", "path", and as the op needs
    /// "data" (UTF-8 text) or "base64", "mode" (octal string) and "to". Unknown ops or fields
    /// are errors naming the entry's index.
    public static func decode(json: [UInt8]) throws(PMLLError) -> FileBatch {
        guard let list = try? JSONDecoder().decode([BatchJSON].self, from: Data(json)) else {
            throw .invalidBatch(index: nil, reason: "not a JSON list of objects")
        }
        var operations: [FileBatch.Operation] = []
        for (index, item) in list.enumerated() {
            guard case let .object(object) = item else { throw .invalidBatch(index: index, reason: "not an object") }
            func string(_ key: String) throws(PMLLError) -> String {
                guard let value = object[key]?.text else { throw .invalidBatch(index: index, reason: "missing or non-string \"\(key)\"") }
                return value
            }
            func mode(_ fallback: UInt32) throws(PMLLError) -> UInt32 {
                guard let text = object["mode"] else { return fallback }
                guard let text = text.text, let value = UInt32(text, radix: 8), value <= 0o7777 else {
                    throw .invalidBatch(index: index, reason: "\"mode\" must be an octal string such as \"0644\"")
                }
                return value
            }
            func data() throws(PMLLError) -> [UInt8] {
                switch (object["data"], object["base64"]) {
                case (.string(let text)?, nil): return Array(text.utf8)
                case (nil, .string(let b64)?):
                    guard let bytes = Data(base64Encoded: b64) else { throw .invalidBatch(index: index, reason: "\"base64\" is not base64") }
                    return Array(bytes)
                default: throw .invalidBatch(index: index, reason: "give exactly one of \"data\" (text) or \"base64\"")
                }
            }
            let op = try string("op")
            let allowed: Set<String>
            let operation: FileBatch.Operation
            switch op {
            case "write": allowed = ["op", "path", "data", "base64", "mode"]; operation = .write(path: try string("path"), data: try data(), mode: try mode(0o644))
            case "replace": allowed = ["op", "path", "data", "base64", "mode"]; operation = .replace(path: try string("path"), data: try data(), mode: try mode(0o644))
            case "delete": allowed = ["op", "path"]; operation = .delete(path: try string("path"))
            case "mkdir": allowed = ["op", "path", "mode"]; operation = .mkdir(path: try string("path"), mode: try mode(0o755))
            case "rename": allowed = ["op", "path", "to"]; operation = .rename(from: try string("path"), to: try string("to"))
            case "fsync": allowed = ["op", "path"]; operation = .fsync(path: try string("path"))
            default: throw .invalidBatch(index: index, reason: "unknown op \"\(op)\"")
            }
            if let unknown = object.keys.first(where: { !allowed.contains($0) }) {
                throw .invalidBatch(index: index, reason: "unknown field \"\(unknown)\" for op \"\(op)\"")
            }
            operations.append(operation)
        }
        return FileBatch(operations)
    }
}
