public import PMLLCore

/// The capability to take locks, typed by the innermost level held (`Held`).
///
/// It is noncopyable and only ever lent to a closure `inout`: it cannot be copied, stored
/// or returned, and while a nested scope runs, the outer context is exclusively accessed,
/// so using it inside the nested scope is a compile-time exclusivity error. A lock of
/// level `L` can be taken only where `Held: MayAcquire<L>`, i.e. strictly after `Held`.
///
/// Every lock kind may be held across `await` (locks belong to the pool participant, not
/// to a thread); the async overloads say so by taking async bodies.
public struct LockContext<Held>: ~Copyable {
    @usableFromInline let held: HeldSet
    /// Release the innermost locks marked inconsistent (see ``LockGrant/markInconsistent()``).
    public var releaseInconsistent = false

    @usableFromInline
    init(held: HeldSet) {
        self.held = held
    }

    /// The previous holder of an innermost lock that did not finish, if any.
    public var previousOwnerDeath: OwnerDeath? { held.previousOwnerDeath }
    /// What taking the innermost locks found (empty for the root context).
    public var acquisitions: [Acquisition] { held.all.map(\.acquisition) }

    public mutating func markInconsistent() { releaseInconsistent = true }
}

extension Pool {
    /// The root of the typed API: a context holding nothing. A second root opened while
    /// locks are held is caught at run time (``PMLLError/hierarchyViolation(held:requested:)``).
    @inlinable
    public func withLockContext<R>(_ body: (inout LockContext<Unlocked>) throws -> R) rethrows -> R {
        var root = LockContext<Unlocked>(held: HeldSet(first: nil))
        return try body(&root)
    }

    public func withLockContext<R>(isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<Unlocked>) async throws -> R) async rethrows -> R {
        var root = LockContext<Unlocked>(held: HeldSet(first: nil))
        return try await body(&root)
    }
}

/// Runs `body` with a nested context for the grant and hands back its inconsistency mark.
@inlinable
package func nested<Level, R>(_ grant: inout LockGrant, _ body: (inout LockContext<Level>) throws -> R) rethrows -> R {
    var inner = LockContext<Level>(held: grant.held)
    defer { grant.releaseInconsistent = inner.releaseInconsistent }
    return try body(&inner)
}

package func nested<Level, R>(_ grant: inout LockGrant, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<Level>) async throws -> R) async rethrows -> R {
    var inner = LockContext<Level>(held: grant.held)
    defer { grant.releaseInconsistent = inner.releaseInconsistent }
    return try await body(&inner)
}

// One method per target level, told apart by its argument label (`withLock(package:)`), so
// that the level is visible at the call site and out-of-order code fails with a precise
// diagnostic: "instance method 'withLock(registry:...)' requires that 'Package' conform to
// 'MayAcquireRegistry'".

extension LockContext {
    @_disfavoredOverload
    @inlinable
    public mutating func withLock<R>(registry lock: Lock<Registry>, timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<Registry>) throws -> R) throws -> R where Held: MayAcquireRegistry {
        try lock.handle.withLock(timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    @_disfavoredOverload
    @inlinable
    public mutating func withLock<R>(package lock: Lock<Package>, timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<Package>) throws -> R) throws -> R where Held: MayAcquirePackage {
        try lock.handle.withLock(timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    @_disfavoredOverload
    @inlinable
    public mutating func withLock<R>(filesystem lock: Lock<FileSystem>, timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<FileSystem>) throws -> R) throws -> R where Held: MayAcquireFileSystem {
        try lock.handle.withLock(timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    @_disfavoredOverload
    @inlinable
    public mutating func withLock<R>(network lock: Lock<Network>, timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<Network>) throws -> R) throws -> R where Held: MayAcquireNetwork {
        try lock.handle.withLock(timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    /// Several package locks in one call, taken in canonical (name) order.
    @_disfavoredOverload
    public mutating func withLocks<R>(package locks: [Lock<Package>], timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<Package>) throws -> R) throws -> R where Held: MayAcquirePackage {
        try Pool.withLocks(locks.map(\.handle), timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    /// Several file-system locks in one call, taken in canonical (name) order.
    @_disfavoredOverload
    public mutating func withLocks<R>(filesystem locks: [Lock<FileSystem>], timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<FileSystem>) throws -> R) throws -> R where Held: MayAcquireFileSystem {
        try Pool.withLocks(locks.map(\.handle), timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    /// Several network locks in one call, taken in canonical (name) order.
    @_disfavoredOverload
    public mutating func withLocks<R>(network locks: [Lock<Network>], timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<Network>) throws -> R) throws -> R where Held: MayAcquireNetwork {
        try Pool.withLocks(locks.map(\.handle), timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    // Async: the lock may be held across `await`; waiting honours Task cancellation.

    public mutating func withLock<R>(registry lock: Lock<Registry>, timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<Registry>) async throws -> R) async throws -> R where Held: MayAcquireRegistry {
        return try await lock.handle.withLock(timeout: timeout) { grant in try await nested(&grant, body) }
    }

    public mutating func withLock<R>(package lock: Lock<Package>, timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<Package>) async throws -> R) async throws -> R where Held: MayAcquirePackage {
        return try await lock.handle.withLock(timeout: timeout) { grant in try await nested(&grant, body) }
    }

    public mutating func withLock<R>(filesystem lock: Lock<FileSystem>, timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<FileSystem>) async throws -> R) async throws -> R where Held: MayAcquireFileSystem {
        return try await lock.handle.withLock(timeout: timeout) { grant in try await nested(&grant, body) }
    }

    public mutating func withLock<R>(network lock: Lock<Network>, timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<Network>) async throws -> R) async throws -> R where Held: MayAcquireNetwork {
        return try await lock.handle.withLock(timeout: timeout) { grant in try await nested(&grant, body) }
    }
}

// Shared holds: the same hierarchy rules (a shared hold counts as holding its level).

extension LockContext {
    @_disfavoredOverload
    @inlinable
    public mutating func withSharedLock<R>(registry lock: Lock<Registry>, timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<Registry>) throws -> R) throws -> R where Held: MayAcquireRegistry {
        try lock.handle.withSharedLock(timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    public mutating func withSharedLock<R>(registry lock: Lock<Registry>, timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<Registry>) async throws -> R) async throws -> R where Held: MayAcquireRegistry {
        try await lock.handle.withSharedLock(timeout: timeout) { grant in try await nested(&grant, body) }
    }

    @_disfavoredOverload
    @inlinable
    public mutating func withSharedLock<R>(package lock: Lock<Package>, timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<Package>) throws -> R) throws -> R where Held: MayAcquirePackage {
        try lock.handle.withSharedLock(timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    public mutating func withSharedLock<R>(package lock: Lock<Package>, timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<Package>) async throws -> R) async throws -> R where Held: MayAcquirePackage {
        try await lock.handle.withSharedLock(timeout: timeout) { grant in try await nested(&grant, body) }
    }

    @_disfavoredOverload
    @inlinable
    public mutating func withSharedLock<R>(filesystem lock: Lock<FileSystem>, timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<FileSystem>) throws -> R) throws -> R where Held: MayAcquireFileSystem {
        try lock.handle.withSharedLock(timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    public mutating func withSharedLock<R>(filesystem lock: Lock<FileSystem>, timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<FileSystem>) async throws -> R) async throws -> R where Held: MayAcquireFileSystem {
        try await lock.handle.withSharedLock(timeout: timeout) { grant in try await nested(&grant, body) }
    }

    @_disfavoredOverload
    @inlinable
    public mutating func withSharedLock<R>(network lock: Lock<Network>, timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockContext<Network>) throws -> R) throws -> R where Held: MayAcquireNetwork {
        try lock.handle.withSharedLock(timeout: timeout, cancellation: cancellation) { grant in try nested(&grant, body) }
    }

    public mutating func withSharedLock<R>(network lock: Lock<Network>, timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockContext<Network>) async throws -> R) async throws -> R where Held: MayAcquireNetwork {
        try await lock.handle.withSharedLock(timeout: timeout) { grant in try await nested(&grant, body) }
    }
}
