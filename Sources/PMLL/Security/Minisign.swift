import CPMLL
import FoundationEssentials
import PMLLCore
public import PMLLStore

/// A minisign public key (the `.pub` file `minisign -G` writes, or its base64 line).
public struct MinisignPublicKey: Sendable, Equatable {
    public let keyID: [UInt8]        // 8 bytes
    let key: [UInt8]                 // 32 bytes of Ed25519 public key
    /// The key's base64 line (what a policy's signature rule lists).
    public let base64: String

    /// Parses a public key file's text (an optional `untrusted comment:` line, then the base64
    /// line) or the base64 line alone.
    public init(text: String, source: String = "public key") throws(PMLLError) {
        let lines = text.split(whereSeparator: \.isNewline).map(trimmed).filter { !$0.isEmpty }
        guard let line = lines.first(where: { !$0.hasPrefix("untrusted comment:") }),
              let bytes = Data(base64Encoded: line).map(Array.init), bytes.count == 42, bytes[0] == 0x45, bytes[1] == 0x64 else {
            throw .signatureRejected(subject: source, reason: "not a minisign public key")
        }
        keyID = Array(bytes[2..<10])
        key = Array(bytes[10..<42])
        base64 = line
    }

    /// The key ID as minisign prints it (hexadecimal, most significant byte first).
    public var keyIDHex: String { keyID.reversed().map { String($0, radix: 16, uppercase: true).leftPadded(2) }.joined() }
}

/// A minisign signature (the `.minisig` file `minisign -S` writes): the legacy form (`Ed`,
/// Ed25519 over the message) or the prehashed one current minisign writes by default (`ED`,
/// Ed25519 over the message's BLAKE2b-512), plus the trusted comment and its global signature.
public struct MinisignSignature: Sendable, Equatable {
    public let prehashed: Bool
    public let keyID: [UInt8]
    let signature: [UInt8]
    public let trustedComment: String
    let globalSignature: [UInt8]

    public init(text: String, source: String = "signature") throws(PMLLError) {
        let lines = text.split(whereSeparator: \.isNewline).map(String.init)
        func bad(_ reason: String) -> PMLLError { .signatureRejected(subject: source, reason: reason) }
        guard lines.count >= 4, lines[0].hasPrefix("untrusted comment:"), lines[2].hasPrefix("trusted comment: ") else {
            throw bad("not a minisign signature (4 lines: untrusted comment, signature, trusted comment, global signature)")
        }
        guard let sig = Data(base64Encoded: trimmed(lines[1])).map(Array.init), sig.count == 74,
              sig[0] == 0x45, sig[1] == 0x64 || sig[1] == 0x44 else {
            throw bad("its signature line is not a minisign Ed25519 signature")
        }
        guard let global = Data(base64Encoded: trimmed(lines[3])).map(Array.init), global.count == 64 else {
            throw bad("its global signature line is malformed")
        }
        prehashed = sig[1] == 0x44
        keyID = Array(sig[2..<10])
        signature = Array(sig[10..<74])
        trustedComment = String(lines[2].dropFirst("trusted comment: ".count))
        globalSignature = global
    }
}

public enum Minisign {
    /// Checks that `signature` signs `message` with one of `trusted`, comment included.
    /// Returns the key that signed; throws ``PMLLError/signatureRejected(subject:reason:)``.
    @discardableResult
    public static func verify(_ message: [UInt8], signature: MinisignSignature, trusted: [MinisignPublicKey], subject: String) throws(PMLLError) -> MinisignPublicKey {
        func reject(_ reason: String) -> PMLLError { .signatureRejected(subject: subject, reason: reason) }
        guard pmll_sign_init() == 0 else { throw reject("libsodium cannot start") }
        guard !trusted.isEmpty else { throw reject("no trusted public key to check it against") }
        guard let key = trusted.first(where: { $0.keyID == signature.keyID }) else {
            let id = MinisignPublicKey.hex(signature.keyID)
            throw reject("signed with key \(id), which is not trusted (trusted: \(trusted.map(\.keyIDHex).joined(separator: ", ")))")
        }
        var signed = message
        if signature.prehashed {
            var hash = [UInt8](repeating: 0, count: 64)
            guard pmll_blake2b512(&hash, message, UInt64(message.count)) == 0 else { throw reject("cannot hash the message") }
            signed = hash
        }
        guard pmll_ed25519_verify(signature.signature, signed, UInt64(signed.count), key.key) == 1 else {
            throw reject("the signature does not match the content (altered content or signature)")
        }
        let global = signature.signature + Array(signature.trustedComment.utf8)
        guard pmll_ed25519_verify(signature.globalSignature, global, UInt64(global.count), key.key) == 1 else {
            throw reject("the trusted comment's signature does not match (altered comment)")
        }
        return key
    }
}

extension MinisignPublicKey {
    static func hex(_ id: [UInt8]) -> String { id.reversed().map { String($0, radix: 16, uppercase: true).leftPadded(2) }.joined() }
}

/// `line` without the blanks around it.
private func trimmed<S: StringProtocol>(_ line: S) -> String {
    let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
    return String(line.drop(while: blank).reversed().drop(while: blank).reversed())
}

private extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}

extension Transaction {
    /// Sets `key` to `value` only if `signature` is a valid minisign signature of exactly these
    /// bytes by one of `trusted` (checked before anything is buffered); otherwise throws
    /// ``PMLLError/signatureRejected(subject:reason:)`` and the transaction is unchanged.
    /// With `trusted` empty, the keys of the access policy's signature rule for `key` are used.
    public mutating func set(_ key: String, _ value: [UInt8], signature: MinisignSignature, trusted: [MinisignPublicKey] = []) throws(PMLLError) {
        let signer: MinisignPublicKey
        do {
            let keys = trusted.isEmpty ? try pool.policyKeys(for: .stateWrite(key: key)) : trusted
            signer = try Minisign.verify(value, signature: signature, trusted: keys, subject: "the value of key '\(key)'")
        } catch {
            if case .signatureRejected(_, let reason) = error { pool.audit(.signatureRejected, .denied, "value of key '\(key)': \(reason)") }
            throw error
        }
        try set(key, value, signedBy: signer.base64)
    }
}
