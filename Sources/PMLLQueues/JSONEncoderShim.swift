import FoundationEssentials
import PMLLCore
import PMLLLocks
import PMLLStore

/// JSON for records the library keeps in its own store (parked abandoned operations).
enum JSONEncoderShim {
    static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(value)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws -> T {
        try JSONDecoder().decode(type, from: Data(bytes))
    }
}
