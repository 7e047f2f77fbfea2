import Foundation

// The JSON shapes of etcd's v3 gRPC gateway (etcd ≥ 3.5). The gateway's conventions:
// bytes are base64, int64 are JSON strings, and a field at its default value is omitted
// (`succeeded: false`, an event of type PUT, a dead lease's TTL), so every decoded field
// that can be a default is optional.

/// Bytes as the gateway writes them: base64 in a JSON string.
struct EtcdBytes: Codable, Hashable, Sendable {
    var bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    init(_ string: String) { self.bytes = Array(string.utf8) }
    init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let data = Data(base64Encoded: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not base64"))
        }
        bytes = Array(data)
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Data(bytes).base64EncodedString())
    }
    var string: String { String(decoding: bytes, as: UTF8.self) }
}

/// An int64 as the gateway writes it (a JSON string; numbers are accepted too).
struct EtcdInt: Codable, Hashable, Sendable {
    var value: Int64
    init(_ value: Int64) { self.value = value }
    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self), let value = Int64(text) {
            self.value = value
        } else {
            value = try container.decode(Int64.self)
        }
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(String(value))
    }
}

struct ResponseHeader: Decodable, Sendable {
    var revision: EtcdInt?
    var rev: Int64 { revision?.value ?? 0 }
}

struct KeyValue: Decodable, Sendable {
    var key: EtcdBytes
    var create_revision: EtcdInt?
    var mod_revision: EtcdInt?
    var value: EtcdBytes?
    var lease: EtcdInt?
    var createRevision: Int64 { create_revision?.value ?? 0 }
    var modRevision: Int64 { mod_revision?.value ?? 0 }
    var valueBytes: [UInt8] { value?.bytes ?? [] }
}

struct RangeRequest: Encodable, Sendable {
    var key: EtcdBytes
    var range_end: EtcdBytes?
    var limit: EtcdInt?
    var sort_order: String?      // "ASCEND" / "DESCEND"
    var sort_target: String?     // "KEY" / "CREATE" / ...
    var keys_only: Bool?
    var count_only: Bool?
    var min_create_revision: EtcdInt?
    var max_create_revision: EtcdInt?
}

struct RangeResponse: Decodable, Sendable {
    var header: ResponseHeader?
    var kvs: [KeyValue]?
    var count: EtcdInt?
    var all: [KeyValue] { kvs ?? [] }
}

struct PutRequest: Encodable, Sendable {
    var key: EtcdBytes
    var value: EtcdBytes
    var lease: EtcdInt?
}

struct DeleteRangeRequest: Encodable, Sendable {
    var key: EtcdBytes
    var range_end: EtcdBytes?
}

struct Compare: Encodable, Sendable {
    var result: String            // "EQUAL", "GREATER", "LESS", "NOT_EQUAL"
    var target: String            // "VERSION", "CREATE", "MOD", "VALUE", "LEASE"
    var key: EtcdBytes
    var range_end: EtcdBytes? = nil   // every key of [key, range_end) must compare true (none: as an absent key)
    var create_revision: EtcdInt?
    var mod_revision: EtcdInt?
    var value: EtcdBytes?

    static func createRevision(_ key: [UInt8], equals revision: Int64) -> Compare {
        Compare(result: "EQUAL", target: "CREATE", key: EtcdBytes(key), create_revision: EtcdInt(revision))
    }
    /// No key starts with `prefix` (a range compare is true for every key in it, and an
    /// empty range compares as one absent key, whose create revision is 0).
    static func noKey(startingWith prefix: [UInt8]) -> Compare {
        Compare(result: "EQUAL", target: "CREATE", key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)), create_revision: EtcdInt(0))
    }
    static func modRevision(_ key: [UInt8], equals revision: Int64) -> Compare {
        Compare(result: "EQUAL", target: "MOD", key: EtcdBytes(key), mod_revision: EtcdInt(revision))
    }
}

struct RequestOp: Encodable, Sendable {
    var request_range: RangeRequest?
    var request_put: PutRequest?
    var request_delete_range: DeleteRangeRequest?
    static func range(_ r: RangeRequest) -> RequestOp { RequestOp(request_range: r) }
    static func put(_ p: PutRequest) -> RequestOp { RequestOp(request_put: p) }
    static func delete(_ key: [UInt8]) -> RequestOp { RequestOp(request_delete_range: DeleteRangeRequest(key: EtcdBytes(key))) }
}

struct TxnRequest: Encodable, Sendable {
    var compare: [Compare]
    var success: [RequestOp]
    var failure: [RequestOp]
}

struct ResponseOp: Decodable, Sendable {
    var response_range: RangeResponse?
    var response_put: PutResponse?
}
struct PutResponse: Decodable, Sendable { var header: ResponseHeader? }

struct TxnResponse: Decodable, Sendable {
    var header: ResponseHeader?
    var succeeded: Bool?
    var responses: [ResponseOp]?
    var didSucceed: Bool { succeeded ?? false }
    func range(_ index: Int) -> RangeResponse? {
        guard let responses, index < responses.count else { return nil }
        return responses[index].response_range
    }
}

struct LeaseGrantRequest: Encodable, Sendable { var TTL: EtcdInt }
struct LeaseGrantResponse: Decodable, Sendable {
    var ID: EtcdInt?
    var TTL: EtcdInt?
    var error: String?
}
struct LeaseIDRequest: Encodable, Sendable { var ID: EtcdInt }
struct LeaseKeepAliveResponse: Decodable, Sendable {
    struct Result: Decodable, Sendable { var ID: EtcdInt?; var TTL: EtcdInt? }
    var result: Result?
}

struct WatchCreate: Encodable, Sendable {
    struct Body: Encodable, Sendable {
        var key: EtcdBytes
        var range_end: EtcdBytes?
        var start_revision: EtcdInt?
        var filters: [String]?
    }
    var create_request: Body
}
struct WatchMessage: Decodable, Sendable {
    struct Event: Decodable, Sendable {
        var type: String?          // absent for PUT (the default)
        var kv: KeyValue?
    }
    struct Result: Decodable, Sendable {
        var header: ResponseHeader?
        var created: Bool?
        var canceled: Bool?
        var compact_revision: EtcdInt?
        var cancel_reason: String?
        var events: [Event]?
    }
    var result: Result?
    var error: GatewayError?
}

/// What the gateway returns instead of a response when etcd refuses a request.
struct GatewayError: Decodable, Sendable, Error {
    var code: Int?
    var message: String?
    var error: String?
    var text: String { message ?? error ?? "code \(code ?? -1)" }
}

/// The end of a prefix range: the prefix with its last byte incremented.
func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
    var end = prefix
    while let last = end.last {
        if last < 0xff {
            end[end.count - 1] = last + 1
            return end
        }
        end.removeLast()
    }
    return [0]   // every key
}
