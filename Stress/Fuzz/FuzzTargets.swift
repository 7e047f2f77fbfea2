import CPMLL
import Dispatch
import PMLL
import PMLLBatchJSON
import PMLLCore
import PMLLFileBatches
#if canImport(Glibc)
import Glibc
#endif

/// The decoders and readers that take bytes PMLL did not write itself: the batch JSON of
/// `pmll batch apply`, the binary batch journal read back from the state store, and a whole
/// pool image (open + check + status + every record). Each must answer any input with a
/// value or a typed error: a trap, a signal or a sanitizer report is a finding.
enum FuzzTarget: String, CaseIterable {
    case batchJSON = "batch-json"
    case journal
    case pool

    func run(_ bytes: [UInt8]) {
        switch self {
        case .batchJSON:
            _ = try? FileBatch.decode(json: bytes)
        case .journal:
            // Whatever decodes must survive a round trip unchanged.
            if let journal = BatchJournal(decoding: bytes), BatchJournal(decoding: journal.encoded()) != journal {
                fatalError("batch journal does not survive encode(decode(input))")
            }
        case .pool:
            PoolImage.shared.exercise(patches: bytes)
        }
    }

    /// Inputs to start from (`pmll-fuzz TARGET --write-seeds DIR`, committed under
    /// Stress/Fuzz/corpus/TARGET).
    var seeds: [[UInt8]] {
        switch self {
        case .batchJSON:
            return [
                #"[{"op":"write","path":"a","data":"x"},{"op":"mkdir","path":"d/e","mode":"0755"}]"#,
                #"[{"op":"replace","path":"a","base64":"AAEC","mode":"0600"},{"op":"rename","path":"a","to":"b"}]"#,
                #"[{"op":"delete","path":"b"},{"op":"fsync","path":"."}]"#,
                #"[{"op":"write","path":"x","data":"y","extra":1}]"#, "[]", "{}", #"[1, "s", null]"#,
            ].map { Array($0.utf8) }
        case .journal:
            var steps = [BatchStep(op: .write, path: "a/b", to: nil, existed: true, toExisted: false, createdDirs: []),
                         BatchStep(op: .rename, path: "x", to: "y/z", existed: true, toExisted: true, createdDirs: []),
                         BatchStep(op: .mkdir, path: "d/e", to: nil, existed: false, toExisted: false, createdDirs: ["d", "d/e"])]
            steps[0].oldInode = 1 << 40
            return [BatchJournal(id: "abc", root: "/opt/cpm", owner: OwnerToken(rawValue: 0x1234), phase: .committed, steps: steps).encoded(),
                    BatchJournal(id: "z", root: "", owner: OwnerToken(rawValue: 1), phase: .staging, steps: []).encoded()]
        case .pool:
            // Patches: (offset u32 LE, length u8, bytes). The empty input is the seed itself.
            return [[], [0x00, 0x00, 0x00, 0x00, 0x03, 0xFF, 0xFF, 0xFF], [0x00, 0x10, 0x00, 0x00, 0x08] + [UInt8](repeating: 0xFF, count: 8)]
        }
    }
}

/// A small pool with everything in it (locks, a held-and-released lock with a death record,
/// queue records, inline and extent values, a deleted key, growth areas), built once per process; each
/// input patches a copy of its bytes and the copy is opened and read every way a command can.
final class PoolImage: @unchecked Sendable {
    static let shared = PoolImage()
    let seed: [UInt8]
    let path: String

    private init() {
        let directory = "/tmp/pmll-fuzz-\(getpid())"
        mkdir(directory, 0o700)
        path = directory + "/image.pool"
        let seedPath = directory + "/seed.pool"
        unlink(seedPath)
        var options = PoolOptions()
        options.size = 512 << 10
        options.processCapacity = 8
        options.lockCapacity = 32
        options.queueCapacity = 2
        options.queueRing = 8
        options.keyCapacity = 64
        options.logSlots = 2
        options.auditRingSlots = 64
        do {
            let pool = try Pool.open(path: seedPath, options: options)
            let a = try pool.lock(named: "pkg/a", level: .package)
            _ = try pool.lock(named: "fs/b", level: .filesystem)
            try a.withLock { grant in grant.markInconsistent() }
            try pool.transaction { tx in
                try tx.set("small", "v")
                try tx.set("large", [UInt8](repeating: 0x5A, count: 3000))
                try tx.set("gone", "x")
            }
            try pool.transaction { tx in try tx.delete("gone") }
            // Past the created tables: the image has a growth directory, a moved index and a
            // blocks area for the patches to damage.
            try pool.transaction { tx in
                for i in 0..<40 { try tx.set("k\(i)", "v\(i)") }
                try tx.set("grown", [UInt8](repeating: 0xA5, count: 120_000))
            }
            let queue = try pool.queue(named: "q")
            let done = DispatchSemaphore(value: 0)
            Task {
                for i in 0..<3 { _ = try? await queue.execute(kind: "k", payload: [UInt8(i)]) { _ in } }
                done.signal()
            }
            done.wait()
        } catch {
            fatalError("cannot build the seed pool: \(error)")
        }
        let fd = open(seedPath, O_RDONLY)
        var st = stat()
        fstat(fd, &st)
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        _ = pread(fd, &bytes, bytes.count, 0)
        close(fd)
        seed = bytes
    }

    func exercise(patches: [UInt8]) {
        var image = seed
        var i = 0
        while i + 5 <= patches.count {
            let offset = Int(UInt32(patches[i]) | UInt32(patches[i + 1]) << 8 | UInt32(patches[i + 2]) << 16 | UInt32(patches[i + 3]) << 24) % image.count
            let length = min(Int(patches[i + 4]) % 32 + 1, patches.count - i - 5, image.count - offset)
            image.replaceSubrange(offset..<(offset + length), with: patches[(i + 5)..<(i + 5 + length)])
            i += 5 + length
        }
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        _ = image.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        var options = PoolOptions()
        options.create = false
        guard let pool = try? Pool.open(path: path, options: options) else { return }
        _ = try? pool.check()
        _ = pool.status()
        if let queues = try? pool.queues() {
            for q in queues { _ = try? pool.queue(named: q.name).records }
        }
        if let keys = try? pool.transaction(isolation: .none, { tx in try tx.keys() }) {
            for key in keys { _ = try? pool.value(for: key) }
        }
        _ = try? pool.transactionStatistics()
        _ = try? pool.storeUsage()
    }
}
