import CPMLL
package import Logging
public import Synchronization
package import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A pool file shared by every process that opens it: the process table, the named locks,
/// the queues and the persistent state store. This core type maps the file and registers
/// the participant; the layers above keep their per-pool state in ``services`` and add
/// their API in extensions, and the `PMLL` facade opens pools (``Pool/open(path:options:)``).
///
/// Each `Pool` value is one participant: it registers one process-table slot, and locks
/// are owned by that participant (all its threads and tasks). The pool is closed when the
/// last reference goes away; locks still held then are released as abandoned, and the
/// next holder is told the previous owner died.
public final class Pool: Sendable {
    /// Absolute or relative path of the pool file as opened.
    public let path: String
    /// What happened while opening.
    public let openReport: OpenReport

    @usableFromInline package let memory: PoolMemory
    /// The pool file, open for its whole life: its OFD byte locks (SESSION, this slot's
    /// liveness byte) last as long as it does.
    package let fd: FileDescriptor
    package let processes: ProcessTable
    package let slot: SlotIndex
    @usableFromInline package let token: OwnerToken
    package let ownerCheckNanoseconds: Int64
    package let starvationNanoseconds: Int64
    /// How long a handoff may wait for its target to claim it before another waiter takes
    /// it: 10 starvation thresholds, at least 50 ms (a runnable process claims in
    /// microseconds; one that does not is stopped or starved of CPU).
    package var handoffClaimNanoseconds: Int64 { max(50_000_000, starvationNanoseconds.multipliedReportingOverflow(by: 10).overflow ? .max : starvationNanoseconds * 10) }
    /// Serialises table-entry creation among this process's threads (OFD locks do not).
    package let tableCreation = Mutex<Void>(())
    /// Per-pool state of the layers above the core.
    @usableFromInline package let services = PoolServices()
    /// The pool's audit ring (nil: the pool has none, or its header is damaged).
    package let auditRing: AuditRing?
    /// This participant's command name, as audit records carry it.
    package let auditCommand: AuditRing.CommandName
    package let auditFileBytes: Int
    /// ``PoolOptions/auditQueueSteps``.
    package let auditQueueSteps: Bool
    /// getpid and geteuid are system calls: read once (a forked child opens its own pool).
    package let processID = ProcessIdentity.pid
    package let auditUID = ProcessIdentity.effectiveUID
    /// One drainer among this process's threads.
    package let auditGate = AuditGate()
    /// The thread draining the audit ring in the background (started by the first kick).
    package let auditDrainer = AuditDrainer()
    /// One past the audit sequence number this participant took last (0: none yet): its
    /// guess at the next free number.
    package let auditNextGuess = Atomic<UInt64>(0)
    /// Whether this process mapped the ring's pages for writing (``prepareAuditAppend()``).
    package let auditRingMapped = Atomic<Bool>(false)
    /// Audit records this participant could not append (the ring stayed full).
    package let auditDropped = Atomic<Int>(0)
    /// The ring's `drained` when this participant last gave up waiting for room (UInt64.max:
    /// never): while the drain has not moved since, records are dropped without waiting again.
    package let auditStalledAt = Atomic<UInt64>(.max)
    /// Hooks the layers above register (repair after an owner death).
    package let hooks = PoolHooks()
    /// Read-only attach and the access policy: asked before anything is written.
    @usableFromInline package let access: AccessGate
    /// `epoch << 8 | flags` of the policy this process read last (``AccessGate``). Equal to
    /// `epoch << 8` exactly when the epoch is current, no lock rule exists and the pool is
    /// writable: the lock path's whole test. A field of the pool itself, not of the gate, so
    /// that the test is one load beside the pool's other hot fields (under contention every
    /// nanosecond between a release and the next acquisition costs throughput).
    @usableFromInline package let accessState: Atomic<UInt64>
    /// The pool file's owner (it may always change the access policy).
    package let ownerUID: UInt32
    /// ``PoolOptions/unmapsAtClose``.
    let unmapsAtClose: Bool
    /// Attached read-only (``PoolOptions/readOnly``): no slot, nothing written.
    public var isReadOnly: Bool { access.readOnly }
    /// This process's events, reported through swift-metrics. Made at first use: its handles
    /// cost about 1 % of a `pmll lock` process, which reports nothing on an uncontended path.
    package var telemetry: Telemetry { services.get(.telemetry) { Telemetry() } }
    package static let logger = LibraryLogging.logger(label: "pmll.pool")

    public struct OpenReport: Sendable, Equatable {
        /// This call created the pool file.
        public let created: Bool
        /// The volatile state was reset while opening, and why.
        public let volatileReset: VolatileReset?
        /// The mapping is real persistent memory (persist = cache flush), else msync is used.
        public let isPersistentMemory: Bool
    }

    /// Durable barriers (`pmem_persist` or `pmem_msync` calls) this process has made so far,
    /// in any pool: what a durability cost is counted in.
    public static var durableBarrierCount: UInt64 { Persistence.barrierCount }

    /// The attach loop behind ``Pool/open(path:options:)``: resolves the path, creates the
    /// file if asked, and attaches, opening again if the file is replaced meanwhile.
    /// `steps` are the layers' parts of the protocol (volatile reset, slot reuse).
    package static func attach(path: String?, options: PoolOptions, steps: AttachSteps) throws(PMLLError) -> Pool {
        try options.validate()
        try Mapping.configure()
        let path = PoolPath.resolve(path)
        guard !path.isEmpty else { throw .invalidPoolPath(path: path, reason: "empty path") }
        guard path.utf8.count < Int(PATH_MAX), !path.utf8.contains(0) else {
            throw .invalidPoolPath(path: path, reason: "longer than PATH_MAX or contains NUL")
        }
        if path == PoolPath.defaultPath && options.create {
            try PoolPath.createParentDirectories(of: path)
        }
        var created = false
        // A pool replaced between open() and mapping is opened again; a few rounds at most.
        for _ in 0..<8 {
            let fd: FileDescriptor
            do {
                fd = try FileDescriptor.open(FilePath(path), options.readOnly ? .readOnly : .readWrite, options: [.closeOnExec])
            } catch {
                let e = Errno(error)
                if e == .noSuchFileOrDirectory, let target = PoolPath.danglingSymlinkTarget(path) {
                    // Creation would fail on the link forever; name the real cause.
                    throw .invalidPoolPath(path: path, reason: "a symbolic link to '\(target)', which does not exist")
                }
                if e == .noSuchFileOrDirectory && options.create && !options.readOnly {
                    created = try PoolCreation.createIfAbsent(path: path, options: options) || created
                    continue
                }
                throw SystemCall.fileError(e, path: path, operation: "open")
            }
            do throws(PMLLError) {
                if options.readOnly { return try Pool(readingOnly: fd, path: path, options: options) }
                if let pool = try Pool(attaching: fd, path: path, created: created, options: options, steps: steps) {
                    return pool
                }
            } catch {
                try? fd.close()
                throw error
            }
            try? fd.close()
        }
        throw .invalidPoolPath(path: path, reason: "the file kept being replaced while opening")
    }

    /// The attach protocol: validate the header from the descriptor (never writing), take
    /// the INIT byte, map, decide whether the volatile state must be reset (nobody else
    /// holds the SESSION byte), join the session, register a process slot.
    /// Returns nil when the path no longer names the file behind `fd`.
    private init?(attaching fd: FileDescriptor, path: String, created: Bool, options: PoolOptions, steps: AttachSteps) throws(PMLLError) {
        let (st, layout, flags) = try Self.inspect(fd, path: path)
        let fileSize = Int(st.st_size)
        // A pool copied as a sparse file would meet a full file system as SIGBUS at the first
        // write into a hole: allocate the holes now, or refuse with the reason.
        let filled = PoolFileBlocks.fillHoles(fd, fileSize: fileSize, heapStart: layout.heap.lowerBound)
        if filled == -ENOSPC {
            throw .noSpace(path: path, reason: "its file is sparse and the file system has no room to allocate its missing blocks (free space, or copy it without --sparse=always)")
        } else if filled == 1 {
            Self.logger.notice("allocated the blocks of a sparse pool file", metadata: ["path": "\(path)"])
        }
        if st.st_uid != geteuid() && flags & PMLL_POOL_FLAG_GROUP_SHARED == 0 {
            throw .foreignOwner(path: path, ownerUID: UInt32(st.st_uid))
        }

        _ = try SystemCall.retrying("fcntl(F_OFD_SETLKW)") { pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_INIT, PMLL_RANGE_EXCLUSIVE, 1) }
        defer { _ = pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_INIT, PMLL_RANGE_UNLOCK, 0) }

        let reserve = Self.reservation(fileSize: fileSize, limit: layout.sizeLimit)
        var sync: Int32 = 0, isPmem: Int32 = 0, err: Int32 = 0
        guard let base = pmll_map_reserved(fd.rawValue, UInt64(fileSize), UInt64(reserve), 1, &sync, &isPmem, &err) else {
            throw SystemCall.fileError(Errno(rawValue: err), path: path, operation: "map")
        }
        var mapped = true
        pmll_fault_guard_register(base, UInt64(reserve), path)
        defer {
            if mapped {
                pmll_fault_guard_unregister(base)
                _ = pmll_pmem_unmap(base, UInt64(reserve))
            }
        }
        var now = stat()
        guard stat(path, &now) == 0, now.st_ino == st.st_ino, now.st_dev == st.st_dev else {
            return nil
        }
        if !created {
            // A file moved over a pool in use: its users are on the former file (a creation
            // looked already).
            let header = base.assumingMemoryBound(to: pmll_header_t.self)
            try FormerPoolFile.refuseIfReplaced(path: path, file: st, directoryMemo: &header.pointee.unreplaced_memo,
                                                fileMemo: &header.pointee.unreplaced_file_memo)
        }
        let mapping = PoolMapping(base: base, length: fileSize, reserved: reserve, writable: true, synchronous: sync != 0, fd: fd.rawValue, path: path)
        let persistence = Persistence(isPmem: isPmem != 0, base: base, volatileStorage: pmll_fs_is_volatile(fd.rawValue) == 1)
        let memory = PoolMemory(base: base, mapping: mapping, layout: layout, persistence: persistence,
                                lockExtents: TableExtents(kind: PMLL_AREA_LOCKS, created: layout.lockCapacity, limit: PMLL_LOCK_ENTRIES_MAX, base: base,
                                                          heap: layout.heap, mapping: mapping, persistence: persistence),
                                queueExtents: TableExtents(kind: PMLL_AREA_QUEUES, created: layout.queueCapacity, limit: PMLL_QUEUES_MAX, base: base,
                                                           heap: layout.heap, mapping: mapping, persistence: persistence))
        _ = try PoolHeader.validate(memory.header, fileSize: fileSize, path: path)

        var ring: AuditRing?
        do { ring = try AuditRing(memory: memory, path: path) } catch {
            Self.logger.error("audit log disabled for this process", metadata: ["path": "\(path)", "error": "\(error)"])
        }
        var reset: VolatileReset? = created ? .created : nil
        var deadSlots = 0
        let alone = pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_SESSION, PMLL_RANGE_EXCLUSIVE, 0)
        if alone == 0 {
            // The reset below walks the process, lock and queue tables.
            memory.prefetch(0..<layout.heap.lowerBound)
            let bootID = ProcessIdentity.bootID()   // read once: a file read each time
            let reason: VolatileReset = VolatileState.bootChanged(memory.header, bootID: bootID) ? .reboot : .noOtherProcess
            if let ring, options.recordsAudit,
               ring.backlog > 0 || ring.header.pointee.stall_seq != 0 || ring.header.pointee.file_index != 0 {
                // Every writer is gone: what they left becomes records or gaps now, and the
                // ring catches up with files that are ahead of it (a restored or copied pool)
                // before anyone appends.
                let drain = AuditDrain(ring: ring, poolPath: path, fd: fd.rawValue, persistence: memory.persistence, isAlive: nil,
                                       fileBytes: options.auditFileBytes, groupShared: memory.header.pointee.flags & PMLL_POOL_FLAG_GROUP_SHARED != 0)
                var session = AuditDrainSession()
                do { try drain.drain(until: .max, session: &session) } catch {
                    Self.logger.error("could not drain the audit ring", metadata: ["path": "\(path)", "error": "\(error)"])
                }
                ring.header.pointee.stall_seq = 0
            }
            deadSlots = VolatileState.reset(memory, reason: reason, bootID: bootID, layers: steps.resetVolatile)
            if !created { reset = reason }
        } else if alone != -EAGAIN {
            try SystemCall.check("fcntl(F_OFD_SETLK)", alone)
        }
        // Converts our exclusive hold to shared, or joins the others' shared holds. Nobody
        // can hold it exclusively now: that only happens under INIT, which we hold.
        _ = try SystemCall.retrying("fcntl(F_OFD_SETLK)") { pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_SESSION, PMLL_RANGE_SHARED, 0) }

        var processes = ProcessTable(memory: memory, fd: fd)
        let (slot, token) = try processes.register(label: options.processLabel, reclaim: steps.reclaimSlot)
        processes.ownSlot = slot

        self.path = path
        self.fd = fd
        self.memory = memory
        self.processes = processes
        self.slot = slot
        self.token = token
        self.ownerCheckNanoseconds = options.ownerCheckInterval.nanoseconds
        self.starvationNanoseconds = options.starvationThreshold.nanoseconds
        self.openReport = OpenReport(created: created, volatileReset: reset, isPersistentMemory: isPmem != 0)
        self.auditRing = options.recordsAudit ? ring : nil
        self.auditCommand = AuditRing.CommandName(withUnsafeBytes(of: memory.slot(slot).pointee.comm) { Array($0.prefix { $0 != 0 }) })
        self.auditFileBytes = options.auditFileBytes
        self.auditQueueSteps = options.auditQueueSteps
        self.access = AccessGate(readOnly: false, lockCapacity: layout.lockCapacity)
        self.accessState = Atomic(AccessGate.initialState(readOnly: false))
        self.ownerUID = UInt32(st.st_uid)
        self.unmapsAtClose = options.unmapsAtClose
        mapped = false
        if let reset, reset != .created {
            // Audited and logged when it cleared something: a reboot, or processes that died
            // attached (a clean pool reopened by the next lone process is not an event).
            if reset == .reboot || deadSlots > 0 {
                Self.logger.debug("pool volatile state reset", metadata: ["path": "\(path)", "reason": "\(reset.rawValue)", "dead slots": "\(deadSlots)"])
                audit(.reset, .ok, "volatile state reset (\(reset.rawValue)): \(deadSlots) process slot(s) of dead processes freed, lock words and queue waits cleared")
            }
        }
    }

    /// Read-only attach: a read lock on INIT while mapping (never inside a volatile reset),
    /// a PROT_READ mapping, no SESSION byte (a reader must not stop the last writer's reset)
    /// and no process slot. Nothing is written to the file.
    private init(readingOnly fd: FileDescriptor, path: String, options: PoolOptions) throws(PMLLError) {
        let (st, layout, _) = try Self.inspect(fd, path: path)
        let fileSize = Int(st.st_size), owner = UInt32(st.st_uid)
        _ = try SystemCall.retrying("fcntl(F_OFD_SETLKW)") { pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_INIT, PMLL_RANGE_SHARED, 1) }
        defer { _ = pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_INIT, PMLL_RANGE_UNLOCK, 0) }
        let reserve = Self.reservation(fileSize: fileSize, limit: layout.sizeLimit)
        var sync: Int32 = 0, isPmem: Int32 = 0, err: Int32 = 0
        guard let base = pmll_map_reserved(fd.rawValue, UInt64(fileSize), UInt64(reserve), 0, &sync, &isPmem, &err) else {
            throw SystemCall.fileError(Errno(rawValue: err), path: path, operation: "map")
        }
        pmll_fault_guard_register(base, UInt64(reserve), path)
        let mapping = PoolMapping(base: base, length: fileSize, reserved: reserve, writable: false, synchronous: false, fd: fd.rawValue, path: path)
        let memory = PoolMemory(base: base, mapping: mapping, layout: layout, persistence: Persistence(isPmem: false, base: base),
                                lockExtents: TableExtents(kind: PMLL_AREA_LOCKS, created: layout.lockCapacity, limit: PMLL_LOCK_ENTRIES_MAX, base: base,
                                                          heap: layout.heap, mapping: mapping, persistence: nil),
                                queueExtents: TableExtents(kind: PMLL_AREA_QUEUES, created: layout.queueCapacity, limit: PMLL_QUEUES_MAX, base: base,
                                                           heap: layout.heap, mapping: mapping, persistence: nil))
        do throws(PMLLError) {
            _ = try PoolHeader.validate(memory.header, fileSize: fileSize, path: path)
        } catch {
            pmll_fault_guard_unregister(base)
            mapping.unmap()
            throw error
        }
        self.path = path
        self.fd = fd
        self.memory = memory
        self.processes = ProcessTable(memory: memory, fd: fd)
        self.slot = SlotIndex(.max)
        self.token = OwnerToken(rawValue: 0)
        self.ownerCheckNanoseconds = options.ownerCheckInterval.nanoseconds
        self.starvationNanoseconds = options.starvationThreshold.nanoseconds
        self.openReport = OpenReport(created: false, volatileReset: nil, isPersistentMemory: false)
        self.auditRing = nil
        self.auditCommand = []
        self.auditFileBytes = options.auditFileBytes
        self.auditQueueSteps = options.auditQueueSteps
        self.access = AccessGate(readOnly: true, lockCapacity: layout.lockCapacity)
        self.accessState = Atomic(AccessGate.initialState(readOnly: true))
        self.ownerUID = owner
        self.unmapsAtClose = options.unmapsAtClose
    }

    /// Address space to reserve for a pool: its size limit, and never less than the file
    /// (a file longer than its limit, copied from elsewhere, still opens).
    private static func reservation(fileSize: Int, limit: Int) -> Int {
        PoolLayout.roundUp(max(fileSize, limit))
    }

    /// The file's status and the layout its header describes, validated without mapping.
    private static func inspect(_ fd: FileDescriptor, path: String) throws(PMLLError) -> (stat, PoolLayout, flags: UInt32) {
        var st = stat()
        _ = try SystemCall.libc("fstat") { fstat(fd.rawValue, &st) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw .notAPool(path: path) }
        let header = UnsafeMutablePointer<pmll_header_t>.allocate(capacity: 1)
        defer { header.deallocate() }
        try readHeader(into: header, fd: fd, fileSize: Int(st.st_size), path: path)
        let layout = try PoolHeader.validate(header, fileSize: Int(st.st_size), path: path)
        // The store's slot width follows its version; a header that names the other one must
        // be refused before the file is mapped writable, as any other layout mismatch is.
        // A version this build does not know is left to the superblock's full check.
        var version: UInt32 = 0
        let at = Int64(layout.heap.lowerBound + MemoryLayout<pmll_store_super_t>.offset(of: \pmll_store_super_t.version)!)
        let n = try? withUnsafeMutableBytes(of: &version) { try fd.read(fromAbsoluteOffset: at, into: $0) }
        if n == 4, pmll_key_slot_width(version) != 0 {
            try StoreLayout.checkVersion(version, signature: header.pointee.layout_signature, path: path)
        }
        return (st, layout, header.pointee.flags)
    }

    /// Reads the header with pread, so that a file that is not a pool is never mapped or written.
    private static func readHeader(into header: UnsafeMutablePointer<pmll_header_t>, fd: FileDescriptor, fileSize: Int, path: String) throws(PMLLError) {
        let raw = UnsafeMutableRawBufferPointer(start: header, count: Int(PMLL_HEADER_SIZE))
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        let wanted = min(fileSize, raw.count)
        var got = 0
        while got < wanted {
            let n: Int
            do {
                n = try fd.read(fromAbsoluteOffset: Int64(got), into: UnsafeMutableRawBufferPointer(rebasing: raw[got..<wanted]))
            } catch {
                throw SystemCall.fileError(Errno(error), path: path, operation: "read")
            }
            if n == 0 { break }
            got += n
        }
        let magic = Array(PMLL_MAGIC.utf8)
        guard got >= magic.count, Array(raw[..<magic.count]) == magic else { throw .notAPool(path: path) }
        guard got == raw.count else {
            throw .corruptPool(path: path, reason: "truncated to \(fileSize) bytes, shorter than its header")
        }
    }

    /// How long closing waits for another process's drain to end (then records stay in the ring).
    static let closeDrainWait: Int64 = 2_000_000_000

    deinit {
        auditDrainer.stop()
        if let ring = auditRing, !reportDroppedAuditRecords(ring) {
            // The ring stayed full to the end: the count goes to the process's log instead.
            Self.logger.error("audit records dropped and not reported in the audit log: the ring stayed full", metadata: ["path": "\(path)", "count": "\(auditDropped.load(ordering: .relaxed))"])
        }
        if let ring = auditRing, ring.backlog > 0 {
            // Another process drains our records too, unless it is stopped holding the drain:
            // then they stay in the ring (in the pool) for the next drain, and closing does
            // not wait for that process to be continued.
            do {
                if try auditDrain(until: Clock.monotonicNanoseconds + Self.closeDrainWait) == nil {
                    Self.logger.notice("audit records left in the ring: another process holds the drain", metadata: ["path": "\(path)"])
                }
            } catch {
                Self.logger.error("could not drain the audit ring", metadata: ["path": "\(path)", "error": "\(error)"])
            }
        }
        if !isReadOnly { processes.unregister(slot: slot) }
        if unmapsAtClose {
            pmll_fault_guard_unregister(memory.base)
            memory.mapping.unmap()
        }
        try? fd.close()   // drops the SESSION and liveness byte locks
    }
}
