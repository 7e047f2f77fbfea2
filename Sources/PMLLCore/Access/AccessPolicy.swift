#if canImport(Glibc)
import Glibc
#endif

/// The pool's access policy (Docs/Security.md, "Access control"): which users and groups may
/// take which locks, write which state keys, apply file batches to which roots, run recovery
/// and change the policy; and which batch roots and state keys need a signature.
///
/// An operation is governed by the rules of its action that match its object. No such rule:
/// allowed (a pool without a policy behaves as before). Otherwise allowed if the caller's
/// user or one of its groups is named by at least one of them; denied, naming the first, if
/// not. The pool's owner may always change the policy, so it can never lock itself out.
public struct AccessPolicy: Codable, Sendable, Equatable {
    public var rules: [AccessRule]
    public var signatures: [SignatureRule]

    public init(rules: [AccessRule] = [], signatures: [SignatureRule] = []) {
        self.rules = rules
        self.signatures = signatures
    }

    /// The first rule that governs `request` when none of the rules that govern it admits
    /// `caller`; nil when the request is allowed.
    package func denyingRule(_ request: AccessRequest, caller: AccessIdentity) -> AccessRule? {
        var first: AccessRule?
        for rule in rules where rule.governs(request) {
            if rule.admits(caller) { return nil }
            if first == nil { first = rule }
        }
        return first
    }

    /// The signature rule that covers a write to `request`'s object (batches and state keys).
    package func signatureRule(for request: AccessRequest) -> SignatureRule? {
        signatures.first { $0.covers(request) }
    }

    package var hasLockRules: Bool { rules.contains { $0.action == .lock } }

    /// Problems that make the policy unusable (a rule without a name, a pattern that is not
    /// valid for its action, a signature rule without keys), one line each.
    public func problems() -> [String] {
        var found: [String] = []
        var names = Set<String>()
        for (i, rule) in rules.enumerated() {
            if rule.name.isEmpty { found.append("rule \(i + 1) has no name") }
            if !names.insert(rule.name).inserted { found.append("rule name '\(rule.name)' used twice") }
            if rule.users.isEmpty && rule.groups.isEmpty { found.append("rule '\(rule.name)' names no user or group (it would deny everyone: say so with an unused group instead)") }
            if rule.level != nil && rule.action != .lock { found.append("rule '\(rule.name)': level applies to lock rules only") }
            if rule.mode != nil && rule.action != .lock { found.append("rule '\(rule.name)': mode applies to lock rules only") }
            if rule.match != nil && (rule.action == .recover || rule.action == .policy) { found.append("rule '\(rule.name)': \(rule.action) rules match nothing (drop 'match')") }
            if rule.action == .batch, let root = rule.match, !root.hasPrefix("/") { found.append("rule '\(rule.name)': a batch root must be an absolute path") }
        }
        for (i, rule) in signatures.enumerated() {
            if rule.name.isEmpty { found.append("signature rule \(i + 1) has no name") }
            if !names.insert(rule.name).inserted { found.append("rule name '\(rule.name)' used twice") }
            if rule.keys.isEmpty { found.append("signature rule '\(rule.name)' lists no public key") }
            if rule.action != .batch && rule.action != .state { found.append("signature rule '\(rule.name)': only batch and state writes carry signatures") }
            if rule.action == .batch, let root = rule.match, !root.hasPrefix("/") { found.append("signature rule '\(rule.name)': a batch root must be an absolute path") }
        }
        return found
    }
}

/// What a rule is about.
public enum AccessAction: String, Codable, Sendable, CaseIterable {
    /// Taking a lock (`match`: a glob over lock names; `level`, `mode` narrow it).
    case lock
    /// Writing (setting or deleting) a state key (`match`: a glob over keys).
    case state
    /// Applying a file batch (`match`: a root directory, which covers everything under it).
    case batch
    /// Running recovery (`pmll recover`, ``Pool/recover``).
    case recover
    /// Changing the policy (its owner always may).
    case policy
}

public enum AccessLockMode: String, Codable, Sendable {
    case shared, exclusive
}

/// One rule: who may do `action` on the objects `match` selects.
public struct AccessRule: Codable, Sendable, Equatable {
    public var name: String
    public var action: AccessAction
    /// nil: every object of the action.
    public var match: String?
    public var level: LockLevel?
    public var mode: AccessLockMode?
    /// Numeric user and group IDs (the CLI takes names and resolves them when the policy is set).
    public var users: [UInt32]
    public var groups: [UInt32]

    public init(name: String, action: AccessAction, match: String? = nil, level: LockLevel? = nil, mode: AccessLockMode? = nil,
                users: [UInt32] = [], groups: [UInt32] = []) {
        (self.name, self.action, self.match, self.level, self.mode, self.users, self.groups) = (name, action, match, level, mode, users, groups)
    }

    package func governs(_ request: AccessRequest) -> Bool {
        guard request.action == action else { return false }
        switch request {
        case let .lock(name, level, shared):
            if let wanted = self.level, wanted != level { return false }
            if let mode, (mode == .shared) != shared { return false }
            return match.map { AccessMatch.glob($0, name) } ?? true
        case let .stateWrite(key):
            return match.map { AccessMatch.glob($0, key) } ?? true
        case let .batch(root):
            return match.map { AccessMatch.under(root, $0) } ?? true
        case .recover, .changePolicy:
            return true
        }
    }

    package func admits(_ caller: AccessIdentity) -> Bool {
        users.contains(caller.uid) || groups.contains { caller.groups.contains($0) }
    }
}

/// Where the policy requires a minisign signature, by which keys.
public struct SignatureRule: Codable, Sendable, Equatable {
    public var name: String
    /// `batch` (match: a root directory) or `state` (match: a glob over keys).
    public var action: AccessAction
    public var match: String?
    /// minisign public keys (the base64 line of a `.pub` file).
    public var keys: [String]

    public init(name: String, action: AccessAction, match: String? = nil, keys: [String]) {
        (self.name, self.action, self.match, self.keys) = (name, action, match, keys)
    }

    package func covers(_ request: AccessRequest) -> Bool {
        switch (action, request) {
        case let (.batch, .batch(root)): match.map { AccessMatch.under(root, $0) } ?? true
        case let (.state, .stateWrite(key)): match.map { AccessMatch.glob($0, key) } ?? true
        default: false
        }
    }
}

/// An operation the policy may govern.
package enum AccessRequest: Sendable {
    case lock(name: String, level: LockLevel, shared: Bool)
    case stateWrite(key: String)
    case batch(root: String)
    case recover
    case changePolicy

    var action: AccessAction {
        switch self {
        case .lock: .lock
        case .stateWrite: .state
        case .batch: .batch
        case .recover: .recover
        case .changePolicy: .policy
        }
    }

    /// How a denial names the operation.
    package var description: String {
        switch self {
        case let .lock(name, level, shared): "take lock '\(name)' (\(level))\(shared ? " shared" : "")"
        case let .stateWrite(key): "write state key '\(key)'"
        case let .batch(root): "apply a file batch to '\(root)'"
        case .recover: "run recovery"
        case .changePolicy: "change the access policy"
        }
    }
}

/// Who is asking: the effective user and every group of the process.
package struct AccessIdentity: Sendable {
    package let uid: UInt32
    package let groups: [UInt32]

    package init(uid: UInt32, groups: [UInt32]) {
        self.uid = uid
        self.groups = groups
    }

    package static func current() -> AccessIdentity {
        var groups = [UInt32(getegid())]
        let count = getgroups(0, nil)
        if count > 0 {
            var list = [gid_t](repeating: 0, count: Int(count))
            let got = getgroups(count, &list)
            if got > 0 { groups += list.prefix(Int(got)).map { UInt32($0) } }
        }
        return AccessIdentity(uid: UInt32(geteuid()), groups: groups)
    }
}

package enum AccessMatch {
    /// fnmatch(3) without special treatment of '/' or leading dots.
    package static func glob(_ pattern: String, _ text: String) -> Bool {
        fnmatch(pattern, text, 0) == 0
    }

    /// `path` is `root` or lies under it (both absolute; `root` may also be a glob).
    package static func under(_ path: String, _ root: String) -> Bool {
        if root.contains(where: { $0 == "*" || $0 == "?" || $0 == "[" }) { return glob(root, path) }
        let base = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
        return path == base || path.hasPrefix(base == "/" ? "/" : base + "/")
    }
}
