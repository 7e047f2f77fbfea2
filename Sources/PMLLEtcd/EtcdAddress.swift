public import PMLLCore

/// A pool address on etcd: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?OPTION=VALUE&...]`.
///
/// The members are tried in the order given; PREFIX (default `pmll`) separates pools that
/// share one cluster. Options: `ttl` is the participant lease's TTL in seconds (default 5,
/// minimum 2, etcd's own minimum with default election timing); `tls=1` speaks HTTPS to the
/// members (trusting the system's CAs), `ca=PATH` trusts the CA in that PEM file instead, and
/// `cert=PATH&key=PATH` present a client certificate (etcd's `--client-cert-auth`); `ca`,
/// `cert` and `key` imply `tls=1`.
public struct EtcdAddress: Sendable, Equatable, CustomStringConvertible {
    public var endpoints: [String]
    public var prefix: String
    public var ttlSeconds: Int64
    /// nil: plain HTTP.
    public var tls: EtcdTLS?

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
            endpoints.append("\(host):\(port)")
        }
        guard !endpoints.isEmpty else { throw bad("no etcd member given") }
        var ttl = Self.defaultTTL
        var tls: EtcdTLS?
        for item in query.split(separator: "&") {
            let pair = item.split(separator: "=", maxSplits: 1)
            guard pair.count == 2 else { throw bad("bad option '\(item)'") }
            switch pair[0] {
            case "ttl":
                guard let value = Int64(pair[1]), value >= Self.minimumTTL, value <= 3600 else {
                    throw bad("ttl must be a whole number of seconds from \(Self.minimumTTL) to 3600")
                }
                ttl = value
            case "tls":
                guard pair[1] == "1" || pair[1] == "0" else { throw bad("tls must be 1 or 0") }
                if pair[1] == "1" { tls = tls ?? EtcdTLS() } else { tls = nil }
            case "ca", "cert", "key":
                guard !pair[1].isEmpty, !pair[1].utf8.contains(0) else { throw bad("\(pair[0]) must name a PEM file") }
                var options = tls ?? EtcdTLS()
                switch pair[0] {
                case "ca": options.caFile = String(pair[1])
                case "cert": options.certificateFile = String(pair[1])
                default: options.keyFile = String(pair[1])
                }
                tls = options
            default: throw bad("unknown option '\(pair[0])' (known: ttl, tls, ca, cert, key)")
            }
        }
        if let tls, (tls.certificateFile == nil) != (tls.keyFile == nil) {
            throw bad("cert and key go together (a client certificate and its private key)")
        }
        self.endpoints = endpoints.map { (tls == nil ? "http://" : "https://") + $0 }
        self.prefix = prefix
        self.ttlSeconds = ttl
        self.tls = tls
    }

    public var description: String {
        var options: [String] = []
        if ttlSeconds != Self.defaultTTL { options.append("ttl=\(ttlSeconds)") }
        if let tls {
            if tls == EtcdTLS() { options.append("tls=1") }
            if let ca = tls.caFile { options.append("ca=\(ca)") }
            if let cert = tls.certificateFile { options.append("cert=\(cert)") }
            if let key = tls.keyFile { options.append("key=\(key)") }
        }
        return Self.scheme + endpoints.map { $0.replacingPrefix("http://").replacingPrefix("https://") }.joined(separator: ",") + "/" + prefix
            + (options.isEmpty ? "" : "?" + options.joined(separator: "&"))
    }
}

/// How a pool speaks TLS to its members (``EtcdAddress``'s `tls`, `ca`, `cert`, `key`).
public struct EtcdTLS: Sendable, Hashable {
    /// PEM file of the CA that signed the members' certificates (nil: the system's CAs).
    public var caFile: String?
    /// PEM files of the client certificate and its key (nil: none presented).
    public var certificateFile: String?
    public var keyFile: String?

    public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
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
    /// A participant's last release (its token), bound to its lease: a release sent again
    /// after a lost answer tells "already released" from "lost" by it.
    func released(_ leaseHex: String) -> [UInt8] { Array((root + "/released/" + leaseHex).utf8) }
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
