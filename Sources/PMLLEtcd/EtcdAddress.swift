public import PMLLCore

/// A pool address on etcd: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?ttl=SECONDS]`.
///
/// The members are tried in the order given; PREFIX (default `pmll`) separates pools that
/// share one cluster; `ttl` is the participant lease's TTL in seconds (default 5, minimum 2,
/// etcd's own minimum with default election timing).
public struct EtcdAddress: Sendable, Equatable, CustomStringConvertible {
    public var endpoints: [String]
    public var prefix: String
    public var ttlSeconds: Int64

    public static let scheme = "etcd://"
    public static let defaultTTL: Int64 = 5
    public static let minimumTTL: Int64 = 2

    public static func isEtcd(_ text: String) -> Bool { text.hasPrefix(scheme) }

    public init(parsing text: String) throws(PMLLError) {
        func bad(_ reason: String) -> PMLLError { .invalidPoolPath(path: text, reason: reason) }
        guard text.hasPrefix(Self.scheme) else { throw bad("an etcd pool address starts with etcd://") }
        var rest = Substring(text.dropFirst(Self.scheme.count))
        var query = Substring("")
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var hosts = rest
        var prefix = "pmll"
        if let slash = rest.firstIndex(of: "/") {
            hosts = rest[..<slash]
            let path = rest[rest.index(after: slash)...].split(separator: "/", omittingEmptySubsequences: true).joined(separator: "/")
            if !path.isEmpty { prefix = path }
        }
        guard prefix.utf8.count <= 200, !prefix.utf8.contains(0) else { throw bad("the prefix must be at most 200 bytes without NUL") }
        var endpoints: [String] = []
        for member in hosts.split(separator: ",", omittingEmptySubsequences: false) {
            guard let colon = member.lastIndex(of: ":"), colon != member.startIndex,
                  let port = UInt16(member[member.index(after: colon)...]), port != 0 else {
                throw bad("member '\(member)' is not HOST:PORT")
            }
            let host = member[..<colon]
            guard host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "[" || $0 == "]" || $0 == ":" }) else {
                throw bad("member '\(member)' has an invalid host name")
            }
            endpoints.append("http://\(host):\(port)")
        }
        guard !endpoints.isEmpty else { throw bad("no etcd member given") }
        var ttl = Self.defaultTTL
        for item in query.split(separator: "&") {
            let pair = item.split(separator: "=", maxSplits: 1)
            guard pair.count == 2 else { throw bad("bad option '\(item)'") }
            switch pair[0] {
            case "ttl":
                guard let value = Int64(pair[1]), value >= Self.minimumTTL, value <= 3600 else {
                    throw bad("ttl must be a whole number of seconds from \(Self.minimumTTL) to 3600")
                }
                ttl = value
            default: throw bad("unknown option '\(pair[0])' (known: ttl)")
            }
        }
        self.endpoints = endpoints
        self.prefix = prefix
        self.ttlSeconds = ttl
    }

    public var description: String {
        Self.scheme + endpoints.map { $0.replacingPrefix("http://") }.joined(separator: ",") + "/" + prefix
            + (ttlSeconds == Self.defaultTTL ? "" : "?ttl=\(ttlSeconds)")
    }
}

extension String {
    func replacingPrefix(_ prefix: String) -> String { hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self }
}

/// Where a pool's records live under its prefix.
struct EtcdKeys: Sendable {
    let root: String

    /// Lock names may hold any byte but NUL; '/' and '%' are escaped so that no lock's key
    /// range contains another lock's keys ("a" and "a/b").
    static func escape(_ name: String) -> String {
        var out = ""
        for byte in name.utf8 {
            if byte == UInt8(ascii: "/") || byte == UInt8(ascii: "%") || byte < 0x20 {
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            } else {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return out
    }
    static func unescape(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var index = text.utf8.startIndex
        let utf8 = text.utf8
        while index != utf8.endIndex {
            let byte = utf8[index]
            if byte == UInt8(ascii: "%"), let end = utf8.index(index, offsetBy: 3, limitedBy: utf8.endIndex),
               let value = UInt8(String(decoding: utf8[utf8.index(after: index)..<end], as: UTF8.self), radix: 16) {
                bytes.append(value)
                index = end
            } else {
                bytes.append(byte)
                index = utf8.index(after: index)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    var lockRoot: [UInt8] { Array((root + "/lock/").utf8) }
    func waiters(_ name: String) -> [UInt8] { Array((root + "/lock/" + Self.escape(name) + "/").utf8) }
    func held(_ name: String) -> [UInt8] { Array((root + "/held/" + Self.escape(name)).utf8) }
    var heldRoot: [UInt8] { Array((root + "/held/").utf8) }
    func level(_ name: String) -> [UInt8] { Array((root + "/level/" + Self.escape(name)).utf8) }
    var levelRoot: [UInt8] { Array((root + "/level/").utf8) }
    func state(_ key: String) -> [UInt8] { Array((root + "/state/").utf8) + Array(key.utf8) }
    var stateRoot: [UInt8] { Array((root + "/state/").utf8) }
    func queueRecords(_ queue: String) -> [UInt8] { Array((root + "/queue/" + Self.escape(queue) + "/").utf8) }
    /// A batch's operations share their turn's ticket and are told apart by their index
    /// (".NNNNNN" after the ticket, so that keys sort in running order).
    func queueRecord(_ queue: String, ticket: Int64, index: Int = 0) -> [UInt8] {
        queueRecords(queue) + Array((String(ticket).leftPadded(to: 19) + (index > 0 ? "." + String(index).leftPadded(to: 6) : "")).utf8)
    }
    /// The totals of a queue's trimmed records.
    func queueTally(_ queue: String) -> [UInt8] { Array((root + "/queuetally/" + Self.escape(queue)).utf8) }
    var queueRoot: [UInt8] { Array((root + "/queue/").utf8) }
}

extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
