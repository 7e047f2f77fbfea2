#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FoundationEssentials
import PMLL

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Show or change the pool's access policy (who may take which locks, write which keys, apply batches where, recover).",
        discussion: """
            The policy is a JSON document (Docs/Security.md): "rules", each {"name", "action": \
            lock|state|batch|recover|policy, "match" (lock or key glob, or batch root \
            directory), "level" and "mode" (locks), "users", "groups" (names or numbers)}, and \
            "signatures", each {"name", "action": batch|state, "match", "keys": minisign \
            public keys (the base64 line, or the path of a .pub file)}. An operation that \
            rules match is allowed only for the users and groups they name; others get exit 77 \
            naming the rule. Only the pool's owner (or a user a policy rule names) may change \
            it; every change is audited.

            \\(ExitStatus.summary)
            """,
        subcommands: [PolicyShow.self, PolicySet.self, PolicyClear.self]
    )
}

struct PolicyShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Print the policy in force.")
    @OptionGroup var poolArguments: PoolArguments
    @Flag(help: "Print the policy document as JSON (the form `policy set` reads).") var json = false

    func run() throws {
        let pool = try poolArguments.openForReading()
        let policy = try pool.accessPolicy()
        if json {
            try printJSON(PolicyDocument(policy ?? AccessPolicy()))
            return
        }
        guard let policy, !(policy.rules.isEmpty && policy.signatures.isEmpty) else {
            print("no access policy: everything the pool file's permissions allow is allowed")
            return
        }
        if !policy.rules.isEmpty {
            var rows = [["RULE", "ACTION", "MATCH", "LEVEL", "MODE", "USERS", "GROUPS"]]
            for r in policy.rules {
                rows.append([r.name, r.action.rawValue, r.match ?? "*", r.level?.description ?? "any", r.mode?.rawValue ?? "any",
                             r.users.map(Principal.userName).joined(separator: ","), r.groups.map(Principal.groupName).joined(separator: ",")])
            }
            print(TableText.render(rows))
        }
        if !policy.signatures.isEmpty {
            if !policy.rules.isEmpty { print("") }
            var rows = [["SIGNATURE RULE", "ACTION", "MATCH", "KEYS"]]
            for s in policy.signatures {
                let ids = s.keys.map { (try? MinisignPublicKey(text: $0).keyIDHex) ?? "?" }
                rows.append([s.name, s.action.rawValue, s.match ?? "*", ids.joined(separator: ",")])
            }
            print(TableText.render(rows))
        }
    }
}

struct PolicySet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set", abstract: "Replace the policy with the JSON document in FILE ('-': standard input).")
    @OptionGroup var poolArguments: PoolArguments
    @Argument(help: "The policy document.") var file: String

    func run() throws {
        guard let bytes = file == "-" ? FileIO.readAll(0) : FileIO.contents(of: file) else {
            throw CommandFailure(message: "cannot read policy file '\(file)'", status: ExitStatus.noPool)
        }
        let document: PolicyDocument
        do {
            document = try JSONDecoder().decode(PolicyDocument.self, from: Data(bytes))
        } catch {
            throw PMLLError.invalidConfiguration(file: file, line: nil, key: nil, reason: "not a policy document: \(PolicyDocument.explain(error))")
        }
        let policy = try document.resolved(source: file)
        let pool = try poolArguments.open(create: false)
        try pool.setAccessPolicy(policy)
        print("policy set: \(policy.rules.count) access rule(s), \(policy.signatures.count) signature rule(s)")
    }
}

struct PolicyClear: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clear", abstract: "Remove the policy (everything the file's permissions allow is allowed again).")
    @OptionGroup var poolArguments: PoolArguments

    func run() throws {
        let pool = try poolArguments.open(create: false)
        try pool.setAccessPolicy(nil)
        print("policy removed")
    }
}

/// A user or group as a policy document names it: a name, or a number.
enum Principal: Codable, Equatable {
    case name(String)
    case id(UInt32)

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let id = try? container.decode(UInt32.self) { self = .id(id) } else { self = .name(try container.decode(String.self)) }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case let .name(name): try container.encode(name)
        case let .id(id): try container.encode(id)
        }
    }

    static func userName(_ uid: UInt32) -> String {
        guard let entry = getpwuid(uid_t(uid)), let name = entry.pointee.pw_name else { return String(uid) }
        return String(cString: name)
    }

    static func groupName(_ gid: UInt32) -> String {
        guard let entry = getgrgid(gid_t(gid)), let name = entry.pointee.gr_name else { return String(gid) }
        return String(cString: name)
    }

    func uid(source: String, rule: String) throws(PMLLError) -> UInt32 {
        try resolve("user", source: source, rule: rule) { getpwnam($0).map { UInt32($0.pointee.pw_uid) } }
    }

    func gid(source: String, rule: String) throws(PMLLError) -> UInt32 {
        try resolve("group", source: source, rule: rule) { getgrnam($0).map { UInt32($0.pointee.gr_gid) } }
    }

    private func resolve(_ kind: String, source: String, rule: String, lookup: (String) -> UInt32?) throws(PMLLError) -> UInt32 {
        switch self {
        case let .id(id): return id
        case let .name(name):
            if let id = UInt32(name) ?? lookup(name) { return id }
            throw .invalidConfiguration(file: source, line: nil, key: rule, reason: "no \(kind) named '\(name)'")
        }
    }
}

/// The policy as people write it: users and groups by name, keys inline or as .pub files.
struct PolicyDocument: Codable {
    struct Rule: Codable {
        var name: String
        var action: AccessAction
        var match: String?
        var level: LockLevel?
        var mode: AccessLockMode?
        var users: [Principal]?
        var groups: [Principal]?
    }
    struct Signature: Codable {
        var name: String
        var action: AccessAction
        var match: String?
        var keys: [String]
    }
    var rules: [Rule]?
    var signatures: [Signature]?

    init(_ policy: AccessPolicy) {
        rules = policy.rules.map {
            Rule(name: $0.name, action: $0.action, match: $0.match, level: $0.level, mode: $0.mode,
                 users: $0.users.map { .name(Principal.userName($0)) }, groups: $0.groups.map { .name(Principal.groupName($0)) })
        }
        signatures = policy.signatures.map { Signature(name: $0.name, action: $0.action, match: $0.match, keys: $0.keys) }
    }

    func resolved(source: String) throws(PMLLError) -> AccessPolicy {
        var policy = AccessPolicy()
        for rule in rules ?? [] {
            var users: [UInt32] = [], groups: [UInt32] = []
            for user in rule.users ?? [] { users.append(try user.uid(source: source, rule: rule.name)) }
            for group in rule.groups ?? [] { groups.append(try group.gid(source: source, rule: rule.name)) }
            policy.rules.append(AccessRule(name: rule.name, action: rule.action, match: rule.match, level: rule.level, mode: rule.mode, users: users, groups: groups))
        }
        for rule in signatures ?? [] {
            var keys: [String] = []
            for key in rule.keys {
                // A path names a .pub file; anything else is the key's base64 line.
                guard key.contains("/") && !key.hasPrefix("RW") else { keys.append(key); continue }
                guard let text = FileIO.contents(of: key) else {
                    throw .invalidConfiguration(file: source, line: nil, key: rule.name, reason: "cannot read public key file '\(key)'")
                }
                keys.append(try MinisignPublicKey(text: String(decoding: text, as: UTF8.self), source: "public key '\(key)'").base64)
            }
            policy.signatures.append(SignatureRule(name: rule.name, action: rule.action, match: rule.match, keys: keys))
        }
        return policy
    }

    /// A decoding error as one line.
    static func explain(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return "\(error)" }
        switch error {
        case let .keyNotFound(key, context): return "missing '\(key.stringValue)' at \(path(context))"
        case let .typeMismatch(_, context), let .valueNotFound(_, context), let .dataCorrupted(context):
            return "\(context.debugDescription) at \(path(context))"
        @unknown default: return "\(error)"
        }
    }

    private static func path(_ context: DecodingError.Context) -> String {
        let parts = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined()
        return parts.isEmpty ? "top level" : parts
    }
}
