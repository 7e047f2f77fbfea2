/// The lock hierarchy: locks are taken in strictly increasing level order.
public enum LockLevel: UInt32, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    case registry = 1
    case package = 2
    case filesystem = 3
    case network = 4

    public static func < (a: LockLevel, b: LockLevel) -> Bool { a.rawValue < b.rawValue }

    public var description: String {
        switch self {
        case .registry: "registry"
        case .package: "package"
        case .filesystem: "filesystem"
        case .network: "network"
        }
    }

    /// Parses `registry`, `package`, `filesystem`, `network` or `1`...`4`.
    public init?(argument: String) {
        if let n = UInt32(argument), let level = LockLevel(rawValue: n) {
            self = level
        } else if let level = LockLevel.allCases.first(where: { $0.description == argument.lowercased() }) {
            self = level
        } else {
            return nil
        }
    }
}

/// Encoded by name (`"package"`), the form `pmll status --json` documents.
extension LockLevel: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let level = LockLevel(argument: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown lock level \(text)"))
        }
        self = level
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
