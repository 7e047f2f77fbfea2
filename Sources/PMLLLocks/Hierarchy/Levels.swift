public import PMLLCore

/// Phantom level types of the lock hierarchy and the "may acquire" chain that orders them.
///
/// Swift has no generic protocols, so "level A may be followed by level B" is a chain of
/// marker protocols: a context holding level `Held` may take a lock of level `L` only if
/// `Held` conforms to `MayAcquire<L>`. Each level conforms to the protocol of the next
/// level, which refines the ones after it, so only strictly later levels are reachable.

/// A level in the hierarchy, used as a phantom type parameter (`Lock<Package>`).
public protocol HierarchyLevel: Sendable {
    static var level: LockLevel { get }
}

public protocol MayAcquireNetwork {}
public protocol MayAcquireFileSystem: MayAcquireNetwork {}
public protocol MayAcquirePackage: MayAcquireFileSystem {}
public protocol MayAcquireRegistry: MayAcquirePackage {}

/// Nothing held yet: the root context may take any level.
public enum Unlocked: MayAcquireRegistry {}

/// Level 1: the global registry lock.
public enum Registry: HierarchyLevel, MayAcquirePackage {
    public static var level: LockLevel { .registry }
}

/// Level 2: per-package locks.
public enum Package: HierarchyLevel, MayAcquireFileSystem {
    public static var level: LockLevel { .package }
}

/// Level 3: file-system locks (install trees, caches on disk).
public enum FileSystem: HierarchyLevel, MayAcquireNetwork {
    public static var level: LockLevel { .filesystem }
}

/// Level 4: network locks. Nothing may be taken while one is held.
public enum Network: HierarchyLevel {
    public static var level: LockLevel { .network }
}

/// A lock whose level is known to the compiler.
public struct Lock<Level: HierarchyLevel>: Sendable, Hashable {
    public let handle: LockHandle
    public var name: String { handle.id.name }
}

extension Pool {
    /// Looks up or creates the lock `name` at the level of `Level`.
    public func lock<Level: HierarchyLevel>(_ name: String, _ level: Level.Type = Level.self) throws(PMLLError) -> Lock<Level> {
        Lock(handle: try lock(named: name, level: Level.level))
    }
}
