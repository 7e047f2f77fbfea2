import CPMLL
/// How a pool is created (when it does not exist yet) and opened.
public struct PoolOptions: Sendable, Equatable {
    /// Create the pool if it does not exist (race-free: exactly one creator wins).
    public var create: Bool = true
    /// Size of a newly created pool file in bytes. The state store grows the file beyond it
    /// when its keys or values need room, up to ``sizeLimit``.
    public var size: Int = 16 << 20
    /// The most bytes a newly created pool's file may grow to (recorded in the pool; every
    /// process that opens it reserves this much address space, not memory). Growing past it
    /// throws ``PMLLError/sizeLimitReached(path:limit:needed:)``. At least ``size``, at most 1 TiB.
    public var sizeLimit: Int = Int(PMLL_SIZE_LIMIT_DEFAULT)
    /// Process-table slots (how many processes may have the pool open at once), at most 1024.
    public var processCapacity: Int = 256
    /// Lock-table entries (distinct lock names over the pool's life).
    public var lockCapacity: Int = 1024
    /// Queues the pool can hold (each also uses one lock-table entry).
    public var queueCapacity: Int = 16
    /// Records kept per queue: the retention of the operation history, and the most
    /// operations that can be waiting in one queue at once.
    public var queueRing: Int = 64
    /// Keys the state store can hold.
    public var keyCapacity: Int = 4096
    /// Undo-log slots of the state store (transactions committing at once).
    public var logSlots: Int = 8
    /// Slots of the audit ring (records appended and not yet drained to the audit files);
    /// 0 creates a pool without an audit log. A power of two, 64...65536.
    public var auditRingSlots: Int = 1024
    /// Record this participant's actions in the pool's audit log (when the pool has one).
    /// Off only for tools that work on a copy of a pool (backup checks its copy this way).
    public var recordsAudit: Bool = true
    /// Record every step of a hardened queue operation (`queue.submit`, `queue.start` for each
    /// attempt, then its end) instead of one record when it ends. The end record always says
    /// when the operation was submitted and started, and how many attempts it took; the steps
    /// triple the records of a queue operation and the audit log's cost with them
    /// (Docs/Audit.md "Queue operations").
    public var auditQueueSteps: Bool = false
    /// An audit file is closed and the next one started once it reaches this size.
    public var auditFileBytes: Int = 8 << 20
    /// Attach without writing a byte: the file is opened and mapped read-only, no process
    /// slot is registered, and only reading works (status, check, state reads); anything that
    /// would write throws ``PMLLError/readOnlyPool(path:operation:)``. Enough for a user who
    /// may only read the file. Never creates.
    public var readOnly: Bool = false
    /// Create the file 0660 so that the owning group may share it; otherwise 0600.
    public var groupShared: Bool = false
    /// How often a waiter checks whether the holder is still alive.
    public var ownerCheckInterval: Duration = .milliseconds(1)
    /// After waiting this long, a waiter asks for the lock to be handed to it on release.
    public var starvationThreshold: Duration = .milliseconds(5)

    /// Command name recorded for this process in the process table (shown as the holder
    /// of its locks); at most 15 bytes are kept. Default: /proc/self/comm.
    public var processLabel: String?

    /// false: closing the pool leaves its mapping to the process's exit. For a process that
    /// exits right after (the CLI's `lock` and `flock`): the `munmap` of the pool's address
    /// reservation walked its page tables and, with a helper thread alive, interrupted the
    /// other CPU to flush its TLB (5 % of a `pmll lock`); exit tears the address space down
    /// once, after the threads are gone. Everything else a close does (the process slot freed,
    /// the descriptor and its locks closed) still happens at the close.
    package var unmapsAtClose = true

    /// The state store version a new pool gets: tests create `PMLL_STORE_VERSION_NARROW`
    /// (128-byte key slots) to exercise the layout of pools created before version 2.
    package var storeVersion: UInt32 = PMLL_STORE_VERSION

    public init() {}

    package func validate() throws(PMLLError) {
        guard (1...1024).contains(processCapacity) else {
            throw .invalidOptions(reason: "processCapacity must be 1...1024, got \(processCapacity)")
        }
        guard (1...1 << 20).contains(lockCapacity) else {
            throw .invalidOptions(reason: "lockCapacity must be 1...1048576, got \(lockCapacity)")
        }
        guard (0...4096).contains(queueCapacity), (2...65536).contains(queueRing), queueCapacity < lockCapacity else {
            throw .invalidOptions(reason: "queueCapacity must be 0...4096 and below lockCapacity, queueRing 2...65536")
        }
        guard (16...1 << 22).contains(keyCapacity), (1...256).contains(logSlots) else {
            throw .invalidOptions(reason: "keyCapacity must be 16...4194304 and logSlots 1...256")
        }
        guard auditRingSlots == 0 || ((64...65536).contains(auditRingSlots) && auditRingSlots & (auditRingSlots - 1) == 0) else {
            throw .invalidOptions(reason: "auditRingSlots must be 0 (no audit log) or a power of two in 64...65536, got \(auditRingSlots)")
        }
        guard auditFileBytes >= 4096 else { throw .invalidOptions(reason: "auditFileBytes must be at least 4096, got \(auditFileBytes)") }
        guard pmll_key_slot_width(storeVersion) != 0 else { throw .invalidOptions(reason: "storeVersion \(storeVersion) is not one this build writes") }
        let needed = layout(size: 0).minimumSize + StoreLayout.minimumHeap(keyCapacity: keyCapacity, logSlots: logSlots, version: storeVersion)
        guard size >= needed, size <= 1 << 40 else {
            throw .invalidOptions(reason: "size must be \(needed)...\(1 << 40) bytes for these capacities, got \(size)")
        }
        guard sizeLimit >= size, sizeLimit <= Self.maximumSizeLimit else {
            throw .invalidOptions(reason: "sizeLimit must be \(size)...\(Self.maximumSizeLimit) bytes (at least size), got \(sizeLimit)")
        }
        guard ownerCheckInterval > .zero, starvationThreshold >= .zero else {
            throw .invalidOptions(reason: "ownerCheckInterval must be positive and starvationThreshold not negative")
        }
    }
}

extension PoolOptions {
    /// Block numbers are 32 bits of 256-byte blocks: a store addresses 1 TiB of values.
    package static let maximumSizeLimit = 1 << 40

    package func layout(size: Int) -> PoolLayout {
        PoolLayout(processCapacity: processCapacity, lockCapacity: lockCapacity, queueCapacity: queueCapacity, queueRing: queueRing,
                   auditBytes: PoolLayout.auditBytes(slots: auditRingSlots), size: size, sizeLimit: sizeLimit)
    }
}

extension Duration {
    /// Whole nanoseconds, saturating at Int64's range (a timeout of 2^40 seconds is "forever",
    /// not a trap).
    package var nanoseconds: Int64 {
        let (s, atto) = components
        let (whole, overflow) = s.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return s < 0 ? .min : .max }
        let (sum, overflow2) = whole.addingReportingOverflow(atto / 1_000_000_000)
        return overflow2 ? (s < 0 ? .min : .max) : sum
    }
}
