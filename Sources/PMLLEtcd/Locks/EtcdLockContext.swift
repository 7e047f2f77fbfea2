public import PMLLCore
public import PMLLLocks

/// An etcd lock whose level the compiler knows, as the local ``Lock``.
public struct EtcdTypedLock<Level: HierarchyLevel>: Sendable, Hashable {
    public let lock: EtcdLock
    public var name: String { lock.id.name }
}

extension EtcdPool {
    /// The lock `name` at the level of `Level` (recorded in etcd on first use, as
    /// ``lock(named:level:)``).
    public func lock<Level: HierarchyLevel>(_ name: String, _ level: Level.Type = Level.self) async throws(PMLLError) -> EtcdTypedLock<Level> {
        EtcdTypedLock(lock: try await lock(named: name, level: Level.level))
    }

    /// The root of the typed API on etcd, as the local pool's `withLockContext`: a context
    /// holding nothing, from which locks can be taken only in hierarchy order — checked by
    /// the compiler (the same level types and `MayAcquire…` rules as locally) and at run time.
    public func withLockContext<R>(_ body: (inout EtcdLockContext<Unlocked>) async throws -> R) async rethrows -> R {
        var root = EtcdLockContext<Unlocked>(grant: nil)
        return try await body(&root)
    }
}

/// The capability to take etcd locks, typed by the innermost level held (`Held`): noncopyable
/// and lent `inout`, so a nested scope cannot use its outer context (an exclusivity error
/// at compile time), as the local ``LockContext``.
public struct EtcdLockContext<Held>: ~Copyable {
    /// The innermost acquisition (nil at the root): its fencing token, what it found.
    public let grant: EtcdLockGrant?
    /// Release the innermost lock marked inconsistent: the next holder is told.
    public var releaseInconsistent = false

    init(grant: EtcdLockGrant?) { self.grant = grant }

    /// The guard for commits made under the innermost lock (``EtcdPool/transaction(fencedBy:attempts:_:)``).
    public var fence: EtcdFence? { grant?.fence }
    public var previousOwnerDeath: OwnerDeath? { grant?.previousOwnerDeath }
    public mutating func markInconsistent() { releaseInconsistent = true }

    static func nested<Level, R>(_ grant: inout EtcdLockGrant, _ body: (inout EtcdLockContext<Level>) async throws -> R) async throws -> R {
        var inner = EtcdLockContext<Level>(grant: grant)
        defer { if inner.releaseInconsistent { grant.markInconsistent() } }
        return try await body(&inner)
    }
}

// One method per target level, told apart by its label, as locally: out-of-order code fails
// with "requires that 'Package' conform to 'MayAcquireRegistry'".
extension EtcdLockContext {
    public mutating func withLock<R>(registry lock: EtcdTypedLock<Registry>, timeout: Duration? = nil,
                                     _ body: (inout EtcdLockContext<Registry>) async throws -> R) async throws -> R where Held: MayAcquireRegistry {
        try await lock.lock.withLock(timeout: timeout) { grant in try await Self.nested(&grant, body) }
    }

    public mutating func withLock<R>(package lock: EtcdTypedLock<Package>, timeout: Duration? = nil,
                                     _ body: (inout EtcdLockContext<Package>) async throws -> R) async throws -> R where Held: MayAcquirePackage {
        try await lock.lock.withLock(timeout: timeout) { grant in try await Self.nested(&grant, body) }
    }

    public mutating func withLock<R>(filesystem lock: EtcdTypedLock<FileSystem>, timeout: Duration? = nil,
                                     _ body: (inout EtcdLockContext<FileSystem>) async throws -> R) async throws -> R where Held: MayAcquireFileSystem {
        try await lock.lock.withLock(timeout: timeout) { grant in try await Self.nested(&grant, body) }
    }

    public mutating func withLock<R>(network lock: EtcdTypedLock<Network>, timeout: Duration? = nil,
                                     _ body: (inout EtcdLockContext<Network>) async throws -> R) async throws -> R where Held: MayAcquireNetwork {
        try await lock.lock.withLock(timeout: timeout) { grant in try await Self.nested(&grant, body) }
    }

    public mutating func withSharedLock<R>(registry lock: EtcdTypedLock<Registry>, timeout: Duration? = nil,
                                           _ body: (inout EtcdLockContext<Registry>) async throws -> R) async throws -> R where Held: MayAcquireRegistry {
        try await lock.lock.withSharedLock(timeout: timeout) { grant in try await Self.nested(&grant, body) }
    }

    public mutating func withSharedLock<R>(package lock: EtcdTypedLock<Package>, timeout: Duration? = nil,
                                           _ body: (inout EtcdLockContext<Package>) async throws -> R) async throws -> R where Held: MayAcquirePackage {
        try await lock.lock.withSharedLock(timeout: timeout) { grant in try await Self.nested(&grant, body) }
    }

    public mutating func withSharedLock<R>(filesystem lock: EtcdTypedLock<FileSystem>, timeout: Duration? = nil,
                                           _ body: (inout EtcdLockContext<FileSystem>) async throws -> R) async throws -> R where Held: MayAcquireFileSystem {
        try await lock.lock.withSharedLock(timeout: timeout) { grant in try await Self.nested(&grant, body) }
    }

    public mutating func withSharedLock<R>(network lock: EtcdTypedLock<Network>, timeout: Duration? = nil,
                                           _ body: (inout EtcdLockContext<Network>) async throws -> R) async throws -> R where Held: MayAcquireNetwork {
        try await lock.lock.withSharedLock(timeout: timeout) { grant in try await Self.nested(&grant, body) }
    }
}
